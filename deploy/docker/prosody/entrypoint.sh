#!/bin/sh
# Entry point of the compose `prosody` service: (re)registers the bridge's
# account tagpoll@tagpoll.local with the password in the xmpp-password
# secret, then runs Prosody in the foreground as the prosody user.
set -eu
cfg=/etc/prosody/tagpoll/prosody.cfg.lua
mkdir -p /var/lib/prosody/certs
chown -R prosody:prosody /var/lib/prosody
pw="$(tr -d '\r\n' < /run/secrets/xmpp-password)"
prosodyctl --config "$cfg" register tagpoll tagpoll.local "$pw" || true
exec runuser -u prosody -- prosody --config "$cfg" -F
