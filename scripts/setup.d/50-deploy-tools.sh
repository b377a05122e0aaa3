# Deployment checks: Debian's docker-compose (v1) so that
# tests/tests/deploy_compose.rs can run `docker-compose config` on
# docker-compose.yml. It validates without a Docker engine. Without it the
# test still runs its structural checks. Skipped when a compose v2 plugin
# (`docker compose`) is there. --no-install-recommends (apt_install) keeps
# docker.io and containerd out.
# Sourced by scripts/setup.sh: no `exit`, skips what is already there.
if docker compose version >/dev/null 2>&1; then
    say "docker compose (v2) already installed"
elif command -v docker-compose >/dev/null 2>&1; then
    say "docker-compose already installed"
elif [ "${TAGPOLL_SKIP_COMPOSE:-}" = 1 ]; then
    say "skipping docker-compose (TAGPOLL_SKIP_COMPOSE=1)"
else
    say "installing Debian docker-compose (v1, for validating docker-compose.yml)"
    apt_install docker-compose
fi
