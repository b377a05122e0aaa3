//! Simulated readers.
