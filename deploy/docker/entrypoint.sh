#!/bin/sh
# Entry point of the tagpoll image: for the settings a binary reads only
# from the environment, a VAR_FILE variable names a file (a docker secret)
# whose content becomes VAR. Then runs the command given.
#   TAGPOLL_ADMIN_TOKEN_FILE -> TAGPOLL_ADMIN_TOKEN   (tagpoll-web)
# (NATS_PASSWORD_FILE, TAGPOLL_VOTER_KEY_FILE and TAGPOLL_XMPP_PASSWORD_FILE
# are read by the binaries themselves.)
set -eu
for var in TAGPOLL_ADMIN_TOKEN; do
    eval "file=\${${var}_FILE:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            echo "tagpoll-entrypoint: ${var}_FILE=$file is not readable" >&2
            exit 1
        fi
        export "$var=$(tr -d '\r\n' < "$file")"
        unset "${var}_FILE"
    fi
done
exec "$@"
