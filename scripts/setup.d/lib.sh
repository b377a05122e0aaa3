# Helpers shared by the setup parts (sourced, not run).
VENV=.venv

say() { printf '[setup] %s\n' "$*" >&2; }

APT_UPDATED=""
# apt_install PKG...: installs Debian packages without recommends.
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

# have_deb PKG: whether a Debian package is installed.
have_deb() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# ensure_venv: a project-local Python venv in .venv.
ensure_venv() {
    [ -x "$VENV/bin/pip" ] && return 0
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        say "python3 with venv support missing: installing it"
        apt_install python3 python3-venv
    fi
    python3 -m venv "$VENV"
}

# pip_install SPEC...: installs pinned Python packages into .venv unless present.
pip_install() {
    ensure_venv
    local missing=()
    for spec in "$@"; do
        "$VENV/bin/pip" show -q "${spec%%[=<>]*}" >/dev/null 2>&1 || missing+=("$spec")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "pip installing ${missing[*]} into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${missing[@]}"
}
