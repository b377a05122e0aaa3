#!/usr/bin/env bash
# Installs what tagpoll needs beyond the Rust toolchain, idempotently: every
# part in scripts/setup.d/ runs in order, and each skips what is already there.
# Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.d/lib.sh
for part in scripts/setup.d/[0-9]*.sh; do
    source "$part"
done
