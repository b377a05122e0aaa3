#!/usr/bin/env bash
# The demo command: the whole system on this machine with a private
# nats-server, simulated readers and the live results page.
# Extra arguments go to `tagpoll dev` (e.g. --http 0.0.0.0:8080 --no-sim).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins --locked
exec target/debug/tagpoll dev "$@"
