#!/bin/bash
# Container health checks of the tagpoll image (docker-compose.yml).
#
#   tagpoll-healthcheck http PORT PATH
#       GET http://127.0.0.1:PORT/PATH answers 200 (web: /healthz).
#       The services without a web port (identity, tally, xmpp, reader)
#       answer GET /healthz on TAGPOLL_METRICS_ADDR: 200 while their
#       heartbeat is fresh and NATS is connected, 503 and the reason if not.
#
# No curl in the image: bash's /dev/tcp does the HTTP/1.0 GET.
set -u
get() { # HOST PORT PATH -> prints the response
    exec 3<>"/dev/tcp/$1/$2" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$1" >&3
    timeout 5 cat <&3
    exec 3<&-
}
case "${1:-}" in
    http)
        resp="$(get 127.0.0.1 "$2" "$3")" || exit 1
        head -n1 <<<"$resp" | grep -q ' 200 ' || { printf '%s\n' "$resp" | sed -n '1p;$p' >&2; exit 1; }
        ;;
    *)
        echo "usage: tagpoll-healthcheck http PORT PATH" >&2
        exit 2
        ;;
esac
