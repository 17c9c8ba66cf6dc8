#!/usr/bin/env bash
# Runs Gatehouse's whole test suite on a fresh machine: installs what the tests need and is
# missing (Debian packages with apt-get, Python packages with pip, the OIDC provider and the
# browser driver with npm, cargo-nextest with cargo), then runs every test with
# cargo nextest. Tests start their own servers on loopback ports picked at run time; they do not
# use services already running on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

packages=()
command -v curl >/dev/null 2>&1 || packages+=(curl)
command -v psql >/dev/null 2>&1 || packages+=(postgresql-client)
if ! command -v pgbench >/dev/null 2>&1 \
    || { ! command -v pg_config >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }; then
    packages+=(postgresql)
fi
{ command -v runuser && command -v prlimit; } >/dev/null 2>&1 || packages+=(util-linux)
command -v cc >/dev/null 2>&1 || packages+=(gcc)
dpkg -s libclang-dev >/dev/null 2>&1 || packages+=(libclang-dev)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
command -v python3 >/dev/null 2>&1 || packages+=(python3 python3-pip)
# nginx: an HTTPS, HTTP/2 upstream for the HTTP adapter's tests.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || packages+=(nginx-light)
# chromium: the headless browser the web-console tests drive (through playwright-core, which
# never downloads a browser of its own).
[ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 || packages+=(chromium)

if [ "${#packages[@]}" -gt 0 ]; then
    echo "installing: ${packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

# pip_install MODULE SPEC: installs SPEC from PyPI unless python3 can import MODULE already.
pip_install() {
    python3 -c "import $1" >/dev/null 2>&1 && return 0
    python3 -m pip install --quiet "$2" || python3 -m pip install --quiet --break-system-packages "$2"
}

# The Prometheus project's parser, to check /metrics.
pip_install prometheus_client 'prometheus_client==0.26.0'
# psycopg 3, a stock PostgreSQL driver the data-path tests drive the gateway with.
pip_install psycopg 'psycopg[binary]==3.3.9'
# The official MCP Python SDK, the stock client the /mcp tests drive the gateway with.
pip_install mcp.client.streamable_http 'mcp==1.30.0'
# httpx, the Python HTTP client the HTTP adapter's tests drive the gateway with (the MCP SDK
# above usually brings it).
pip_install httpx 'httpx==0.28.1'
# Brotli for Python: the HTTP adapter's tests serve brotli-encoded answers with it.
pip_install brotli 'brotli==1.1.0'

# The OIDC provider the tests run (an npm package, pinned by its lockfile).
if [ ! -d crates/testkit/oidc/node_modules/oauth2-mock-server ]; then
    npm ci --prefix crates/testkit/oidc --no-audit --no-fund
fi
# The driver of the headless browser (an npm package, pinned by its lockfile).
if [ ! -d crates/testkit/browser/node_modules/playwright-core ]; then
    npm ci --prefix crates/testkit/browser --no-audit --no-fund
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

cargo nextest run --workspace --profile ci "$@"
