# XMPP: Debian's prosody (the real server the XMPP bridge tests run against)
# and slixmpp in .venv (an independent client library for the interop test).
# Sourced by scripts/setup.sh: no `exit`, skips what is already there.
SLIXMPP_VERSION=1.17.0
if command -v prosody >/dev/null 2>&1 || [ -x /usr/bin/prosody ]; then
    say "prosody already installed"
else
    say "installing Debian prosody"
    apt_install prosody
    # The package starts a system-wide instance on 5222; tests run their own.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prosody 2>/dev/null; then
        systemctl stop prosody 2>/dev/null || true
        systemctl disable prosody 2>/dev/null || true
    fi
fi
pip_install "slixmpp==$SLIXMPP_VERSION"
