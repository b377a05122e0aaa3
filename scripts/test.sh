#!/usr/bin/env bash
# The test command: installs what the tests need (idempotently), builds every
# binary once, and runs the whole test suite against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# End-to-end tests start the service binaries, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast "$@"
