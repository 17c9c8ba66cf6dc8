# Shared by the benchmark scripts (sourced, not run): installing what they need, a temporary
# directory cleaned up on exit, free loopback ports, and starting nginx, PostgreSQL and Gatehouse.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# install_missing PACKAGE...: apt-get install the Debian packages given (the caller checks which
# are missing).
install_missing() {
    [ "$#" -gt 0 ] || return 0
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# pg_missing: the PostgreSQL packages the benchmarks need and the machine lacks.
pg_missing() {
    command -v pgbench >/dev/null 2>&1 || echo postgresql-client
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_config >/dev/null 2>&1 || echo postgresql
    dpkg -s libclang-dev >/dev/null 2>&1 || echo libclang-dev
}

# ensure_psycopg: the psycopg 3 driver, from PyPI, for the Python clients some benchmarks run.
ensure_psycopg() {
    python3 -c 'import psycopg' >/dev/null 2>&1 && return 0
    python3 -m pip install --quiet 'psycopg[binary]==3.3.9' \
        || python3 -m pip install --quiet --break-system-packages 'psycopg[binary]==3.3.9'
}

# bench_setup: PostgreSQL's bin directory, the release build of Gatehouse (or the binary
# $GATEHOUSE_BIN names, to compare two builds), and a temporary directory ($TMP) whose servers
# ($pids, PostgreSQL) are stopped on exit. Servers refuse to run as root: they run as nobody then
# ($RUN, $OWNER).
bench_setup() {
    BINDIR=$(pg_config --bindir 2>/dev/null || true)
    [ -x "$BINDIR/initdb" ] || BINDIR=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    if [ -n "${GATEHOUSE_BIN:-}" ]; then
        GATEHOUSE=$(realpath "$GATEHOUSE_BIN")
    else
        cargo build --release -q -p gatehouse-server
        GATEHOUSE=$PWD/target/release/gatehouse
    fi
    TMP=$(mktemp -d /tmp/gatehouse-bench.XXXXXX)
    chmod 755 "$TMP"
    if [ "$(id -u)" = 0 ]; then RUN=(runuser -u nobody --); OWNER=nobody; else RUN=(); OWNER=$(id -un); fi
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    "${RUN[@]}" "$BINDIR/pg_ctl" -D "$TMP/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$TMP"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# start_nginx PORT: nginx (Debian's) on loopback serving, from $TMP/nginx/www,
# /v1/customers.json: 20 customers with an email address each (1.6 KB of JSON).
start_nginx() {
    mkdir -p "$TMP/nginx/www/v1" "$TMP/nginx/logs"
    python3 - "$TMP/nginx/www/v1/customers.json" <<'PY'
import json, sys
customers = [{"id": i, "name": f"Customer {i}", "email": f"user{i}@example.com", "city": "Oslo"} for i in range(20)]
json.dump({"customers": customers, "total": len(customers)}, open(sys.argv[1], "w"))
PY
    cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type application/json;
    types { application/json json; }
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$1;
        root $TMP/nginx/www;
    }
}
CONF
    PATH=$PATH:/usr/sbin nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
    pids+=($!)
    wait_port "$1"
}

# start_postgres PORT MAX_CONNECTIONS SCALE: a throwaway PostgreSQL in $TMP/pg (trust auth, fsync
# off), initialised for pgbench at SCALE.
start_postgres() {
    mkdir -p "$TMP/pg" "$TMP/run" && chown "$OWNER" "$TMP/pg" "$TMP/run"
    "${RUN[@]}" "$BINDIR/initdb" -D "$TMP/pg" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
    cat >>"$TMP/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $1
unix_socket_directories = '$TMP/run'
max_connections = $2
shared_buffers = 128MB
fsync = off
CONF
    "${RUN[@]}" "$BINDIR/pg_ctl" -D "$TMP/pg" -l "$TMP/run/pg.log" -w start >/dev/null
    pgbench -i -q -s "$3" -h 127.0.0.1 -p "$1" -U postgres postgres >/dev/null 2>&1
}

# start_gatehouse API_PORT PG_PORT [VAR=VALUE...]: Gatehouse in $TMP/gw with the given settings
# ($GW_PID); the client is then set up as admin ($GATEHOUSE_SERVER, $GATEHOUSE_TOKEN).
start_gatehouse() {
    local api=$1 listen=$2
    shift 2
    env -u GATEHOUSE_TOKEN -u GATEHOUSE_SERVER GATEHOUSE_LISTEN_API="127.0.0.1:$api" \
        GATEHOUSE_LISTEN_POSTGRES="127.0.0.1:$listen" GATEHOUSE_LISTEN_HTTP="${GATEHOUSE_LISTEN_HTTP:-}" \
        GATEHOUSE_LOG_LEVEL=warn "$@" \
        "$GATEHOUSE" serve --data-dir "$TMP/gw" >"$TMP/gatehouse.log" 2>&1 &
    GW_PID=$!
    pids+=("$GW_PID")
    wait_port "$listen"
    for _ in $(seq 1 100); do [ -s "$TMP/gw/admin.token" ] && break; sleep 0.05; done
    export GATEHOUSE_SERVER="http://127.0.0.1:$api" GATEHOUSE_TOKEN
    GATEHOUSE_TOKEN=$(cat "$TMP/gw/admin.token")
}

# best_tps gatehouse|direct: the best `pgbench -S` TPS of $RUNS runs of $DURATION s with $CLIENTS
# clients, through Gatehouse ($GW_PORT, as the identity whose token is $BENCH_TOKEN, connection
# `bench`) or directly ($PG_PORT).
best_tps() {
    local best=0 tps target
    for _ in $(seq 1 "$RUNS"); do
        if [ "$1" = gatehouse ]; then target=(-h 127.0.0.1 -p "$GW_PORT" -U bench bench); else target=(-h 127.0.0.1 -p "$PG_PORT" -U postgres postgres); fi
        tps=$(PGPASSWORD=$BENCH_TOKEN PGSSLMODE=disable pgbench -n -S -M simple -c "$CLIENTS" -j 2 -T "$DURATION" \
            "${target[@]}" 2>&1 | awk '/^tps = / {print $3; exit}')
        [ -n "$tps" ] || { echo "pgbench failed ($1)" >&2; exit 1; }
        if awk -v a="$tps" -v b="$best" 'BEGIN {exit !(a > b)}'; then best=$tps; fi
    done
    echo "$best"
}

# machine_costs: what this machine charges for two things no recording proxy avoids, so that the
# ratios measured here can be read against another machine's: a wake-up round trip between two
# processes over pipes (each hop through a proxy pays such wake-ups) and a 4 KiB write forced to
# disk in $TMP (what forcing the audit trail to disk costs).
machine_costs() {
    python3 - "$TMP" <<'PY'
import os, sys, time
r1, w1 = os.pipe(); r2, w2 = os.pipe(); n = 2000
if os.fork() == 0:
    for _ in range(n):
        os.read(r1, 1); os.write(w2, b"x")
    os._exit(0)
start = time.perf_counter()
for _ in range(n):
    os.write(w1, b"x"); os.read(r2, 1)
wake = (time.perf_counter() - start) / n * 1e6
os.wait()
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600); block = b"x" * 4096; m = 50
start = time.perf_counter()
for _ in range(m):
    os.pwrite(fd, block, 0); os.fdatasync(fd)
sync = (time.perf_counter() - start) / m * 1e6
os.close(fd); os.remove(path)
print(f"== this machine: a wake-up round trip between two processes {wake:.0f} us, a 4 KiB write forced to disk {sync:.0f} us")
PY
}

# cpu_ticks PID: the CPU time (user + system, in clock ticks) the process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# cpu_split PID...: the CPU time the processes have used so far, in clock ticks, as
# "user system recording". Recording is the user + system time of Gatehouse's audit threads
# (audit-import moves journaled events into the store, audit-fsync forces them to disk), which
# live as long as the server; the rest of Gatehouse's time is its request path.
cpu_split() {
    local p t
    for p in "$@"; do
        sed 's/^.*) //' "/proc/$p/stat" | awk '{print "all", $12, $13}'
        for t in /proc/"$p"/task/*; do
            case $(cat "$t/comm" 2>/dev/null) in
                audit-import | audit-fsync) sed 's/^.*) //' "$t/stat" 2>/dev/null | awk '{print "rec", $12, $13}' ;;
            esac
        done
    done | awk '$1 == "all" {u += $2; s += $3} $1 == "rec" {r += $2 + $3} END {print u + 0, s + 0, r + 0}'
}

# ctx_switches PID: the context switches (voluntary and not) of the process's threads so far.
# Threads that ended are no longer counted: read it around a window in which none do.
ctx_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ {n += $2} END {print n + 0}'
}
