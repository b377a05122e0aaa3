//! Service wiring.
