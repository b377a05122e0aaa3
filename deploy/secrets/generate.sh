#!/usr/bin/env bash
# Makes the secrets docker-compose.yml expects, once; existing files are kept.
#
#   deploy/secrets/generate.sh [DIR]      (default: this folder)
#
# DIR/nats-ROLE.password   NATS password of each role (admin identity tally
#                          web xmpp sim); the nats container reads them all,
#                          each service only its own (NATS_PASSWORD_FILE)
# DIR/voter-key            key of the anonymous voter ids (identity)
# DIR/admin-token          bearer token of the web admin API
# DIR/xmpp.password        the XMPP bridge's account password (replace it
#                          with the real one if your XMPP server has it)
#
# Reader boxes get their own passwords from deploy/nats/add-device.sh.
# Everything here is letters and digits starting with a letter, so it is
# safe in nats-server's config variables.
#
# Permissions: the folder is made mode 700 (only you), the files 644 —
# docker bind-mounts secret files with their host mode, and the services
# run as uid 10001 in their containers, so they must be able to read them.
set -euo pipefail
dir="${1:-$(cd "$(dirname "$0")" && pwd)}"
mkdir -p "$dir" "$dir/tls"
chmod 700 "$dir"
umask 022
random() { printf 'p%s' "$(head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
make() {
    local file="$dir/$1" bytes="$2"
    if [ -s "$file" ]; then
        echo "kept    $file" >&2
    else
        random "$bytes" > "$file"
        echo "created $file" >&2
    fi
}
for role in admin identity tally web xmpp sim; do
    make "nats-$role.password" 24
done
make voter-key 32
make admin-token 24
make xmpp.password 24
