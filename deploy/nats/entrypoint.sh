#!/bin/sh
# Entry point of the nats container (docker-compose.yml): turns each secret
# file /run/secrets/nats-pw-ROLE into TAGPOLL_NATS_PW_ROLE (the
# variables users.conf reads), then runs nats-server with the arguments
# given. Secrets stay in files; they never appear in the compose file or in
# `docker inspect`.
set -eu
dir="${TAGPOLL_SECRETS_DIR:-/run/secrets}"
for f in "$dir"/nats-pw-*; do
    [ -f "$f" ] || continue
    role="$(basename "$f")"
    role="${role#nats-pw-}"
    var="TAGPOLL_NATS_PW_$(echo "$role" | tr 'a-z-' 'A-Z_')"
    export "$var=$(tr -d '\r\n' < "$f")"
done
exec nats-server "$@"
