#!/usr/bin/env bash
# Adds (or replaces) a reader device's NATS user in users.conf.
#
#   deploy/nats/add-device.sh [--users FILE] [--secrets DIR] DEVICE
#
# The device may then only
#   - publish taps on tagpoll.reads.DEVICE.* and heartbeats on
#     tagpoll.heartbeat.device.DEVICE.* (exactly one token more: the
#     subject grammar; re-run this for devices added before that),
#   - look up the tagpoll streams and buckets (tagpoll-reader does at start),
#   - receive the feedback for taps on this box (tagpoll.feedback.DEVICE.>,
#     for the LED/buzzer and the feedback hook) and replies on its own inbox
#     (_INBOX.reader-DEVICE.>, which the services' NATS client uses by itself).
# Nothing here names readers: moving a reader to another box needs no change.
# (Reader ids after DEVICE, which older versions needed, are checked and
# otherwise ignored.)
#
# A new random password is written to DIR/reader-DEVICE.password (default
# deploy/secrets/devices/, never committed); users.conf gets only its bcrypt
# hash. Copy the password file to the box and point NATS_PASSWORD_FILE at
# it, with NATS_USER=reader-DEVICE. Set TAGPOLL_DEVICE_PASSWORD to use a
# password of your own instead. Reload the server afterwards:
#   docker compose kill -s HUP nats      (or restart it)
#
# Hashing needs python3 with the `bcrypt` module, or python3's `crypt`
# module (Debian 12; removed in Python 3.13), or `htpasswd` (apache2-utils).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
users="$here/users.conf"
secrets="$here/../secrets/devices"

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --users) users="$2"; shift 2 ;;
        --secrets) secrets="$2"; shift 2 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "add-device.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
device="$1"; shift
id_ok() { [[ "$1" =~ ^[A-Za-z0-9_-]{1,64}$ ]]; }
id_ok "$device" || { echo "add-device.sh: device id '$device' must be 1-64 of A-Z a-z 0-9 - _" >&2; exit 2; }
for r in "$@"; do
    id_ok "$r" || { echo "add-device.sh: reader id '$r' must be 1-64 of A-Z a-z 0-9 - _" >&2; exit 2; }
done
[ -f "$users" ] || { echo "add-device.sh: no users file $users" >&2; exit 1; }
marker='# --- reader devices (add-device.sh inserts above this line) ---'
grep -qF -- "$marker" "$users" || { echo "add-device.sh: $users lacks the marker line: $marker" >&2; exit 1; }

user="reader-$device"
password="${TAGPOLL_DEVICE_PASSWORD:-}"
if [ -z "$password" ]; then
    # Letters and digits, starting with a letter: safe anywhere.
    password="p$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi

bcrypt_hash() {
    if command -v python3 >/dev/null 2>&1; then
        if PW="$1" python3 -c 'import bcrypt' 2>/dev/null; then
            PW="$1" python3 -c 'import bcrypt, os; print(bcrypt.hashpw(os.environ["PW"].encode(), bcrypt.gensalt(11)).decode())'
            return
        fi
        if PW="$1" python3 -W ignore -c 'import crypt; assert crypt.METHOD_BLOWFISH' 2>/dev/null; then
            PW="$1" python3 -W ignore -c 'import crypt, os; print(crypt.crypt(os.environ["PW"], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2048)))'
            return
        fi
    fi
    if command -v htpasswd >/dev/null 2>&1; then
        htpasswd -nbBC 11 x "$1" | head -n1 | cut -d: -f2-
        return
    fi
    echo "add-device.sh: no bcrypt tool: install python3-bcrypt or apache2-utils" >&2
    exit 1
}
hash="$(bcrypt_hash "$password")"
case "$hash" in
    '$2'*) ;;
    *) echo "add-device.sh: hashing failed (got '$hash')" >&2; exit 1 ;;
esac

block="$(mktemp)"
trap 'rm -f "$block" "$block.new"' EXIT
{
    echo "  # >>> device $device"
    echo "  {user: \"$user\", password: \"$hash\", permissions: {"
    echo "    publish: { allow: ["
    for s in TAGPOLL_READS TAGPOLL_IDENTIFIED TAGPOLL_VOTES TAGPOLL_HEARTBEATS TAGPOLL_CONFIG_HISTORY TAGPOLL_DEAD KV_tagpoll_config KV_tagpoll_results; do
        echo "      \"\$JS.API.STREAM.INFO.$s\""
    done
    echo "      \"tagpoll.reads.$device.*\""
    echo "      \"tagpoll.heartbeat.device.$device.*\""
    echo "    ] }"
    echo "    subscribe: { allow: ["
    echo "      \"_INBOX.$user.>\""
    echo "      \"tagpoll.feedback.$device.>\""
    echo "    ] }"
    echo "  }}"
    echo "  # <<< device $device"
} > "$block"

# Drop an earlier block of this device, then insert above the marker.
awk -v start="  # >>> device $device" -v end="  # <<< device $device" -v marker="$marker" -v blockfile="$block" '
    $0 == start { skip = 1; next }
    skip && $0 == end { skip = 0; next }
    skip { next }
    index($0, marker) {
        while ((getline line < blockfile) > 0) print line
    }
    { print }
' "$users" > "$block.new"
cat "$block.new" > "$users"

mkdir -p "$secrets"
chmod 700 "$secrets" 2>/dev/null || true
umask 077
printf '%s\n' "$password" > "$secrets/$user.password"
echo "added $user to $users" >&2
echo "password in $secrets/$user.password: copy it to the box as NATS_PASSWORD_FILE, with NATS_USER=$user" >&2
echo "reload the server: docker compose kill -s HUP nats" >&2
