#!/bin/bash
# Container health checks of the tagpoll image (docker-compose.yml).
#
#   tagpoll-healthcheck http PORT PATH
#       GET http://127.0.0.1:PORT/PATH answers 200 (web: /healthz).
#   tagpoll-healthcheck nats
#       This container holds a live NATS connection: the server's monitoring
#       port (TAGPOLL_NATS_MONITOR, default nats:8222) lists a connection of
#       user $NATS_USER from this container's address. For the services
#       without an HTTP port (identity, tally, xmpp): a process that lost
#       NATS, or hangs before connecting, turns unhealthy.
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
        head -n1 <<<"$resp" | grep -q ' 200 ' || { head -n1 <<<"$resp" >&2; exit 1; }
        ;;
    nats)
        mon="${TAGPOLL_NATS_MONITOR:-nats:8222}"
        user="${NATS_USER:?NATS_USER is not set}"
        ip="${TAGPOLL_HEALTHCHECK_IP:-$(hostname -i 2>/dev/null | tr ' ' '\n' | grep -v '^$' | head -n1)}"
        resp="$(get "${mon%:*}" "${mon##*:}" "/connz?user=$user&limit=1024")" || { echo "NATS monitoring $mon unreachable" >&2; exit 1; }
        if grep -q "\"ip\": \"$ip\"" <<<"$resp"; then
            exit 0
        fi
        echo "no NATS connection of user $user from $ip" >&2
        exit 1
        ;;
    *)
        echo "usage: tagpoll-healthcheck http PORT PATH | nats" >&2
        exit 2
        ;;
esac
