#!/usr/bin/env bash
# Gatehouse's user-space instructions per `pgbench -S` transaction, one client, simple and
# extended protocol, and per HTTP request (a 1.6 KB JSON body from nginx with 20 email
# addresses masked, one keep-alive connection, as `bench/http.sh` serves), counted by
# valgrind's callgrind. Unlike TPS and CPU time, the count does
# not depend on what else the machine is doing, so two builds can be compared on a busy or
# shared machine: a change that saves work shows up however noisy the timings are. (The count
# leaves out the kernel's work: sends, receives, file writes and wake-ups; bench/pgbench.sh
# measures those. Under valgrind, SHA-256 runs without the CPU's SHA instructions, so it
# weighs more here than it does natively.)
#
# Starts its own PostgreSQL and nginx on loopback ports picked at run time, then each build in
# turn under callgrind (recording on, default settings), warms it up, and counts N transactions
# (or requests) of each kind.
#
#   bench/instructions.sh                            # the release build
#   bench/instructions.sh OLD_BINARY NEW_BINARY      # two builds, one after the other
#   N=5000 bench/instructions.sh                     # transactions counted per protocol (3000)
#   KEEP=dir bench/instructions.sh ...               # keep the callgrind files there, for
#                                                    # `callgrind_annotate --inclusive=yes FILE`
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-3000}

. bench/lib.sh
missing=($(pg_missing))
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v curl >/dev/null 2>&1 || missing+=(curl)
install_missing "${missing[@]}"
if [ "$#" -gt 0 ]; then GATEHOUSE_BIN=$1; fi
bench_setup
builds=("$@")
[ "${#builds[@]}" -gt 0 ] || builds=("$GATEHOUSE")

PG_PORT=$(free_port)
echo "== PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') on $PG_PORT, scale 1"
start_postgres "$PG_PORT" 20 1
NGINX_PORT=$(free_port)
echo "== nginx on $NGINX_PORT"
start_nginx "$NGINX_PORT"
mkdir -p "$TMP/cg" && chmod 777 "$TMP/cg"

printf '\n%-40s %-9s %14s\n' build protocol 'instructions/txn (or request)'
n=0
for bin in "${builds[@]}"; do
    n=$((n + 1))
    bin=$(realpath "$bin")
    api=$(free_port); listen=$(free_port); http=$(free_port); data="$TMP/gw$n"
    env -u GATEHOUSE_TOKEN -u GATEHOUSE_SERVER GATEHOUSE_LISTEN_API="127.0.0.1:$api" \
        GATEHOUSE_LISTEN_POSTGRES="127.0.0.1:$listen" GATEHOUSE_LISTEN_HTTP="127.0.0.1:$http" \
        GATEHOUSE_LOG_LEVEL=warn \
        valgrind --tool=callgrind --callgrind-out-file="$TMP/cg/out.$n.%p" "$bin" serve --data-dir "$data" \
        >"$TMP/gatehouse$n.log" 2>&1 &
    vpid=$!
    pids+=("$vpid")
    # Under valgrind the start takes a while.
    for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$listen") 2>/dev/null && break; sleep 0.1; done
    for _ in $(seq 1 100); do [ -s "$data/admin.token" ] && break; sleep 0.1; done
    export GATEHOUSE_SERVER="http://127.0.0.1:$api" GATEHOUSE_TOKEN
    GATEHOUSE_TOKEN=$(cat "$data/admin.token")
    "$bin" connections add bench --type postgres --host 127.0.0.1 --port "$PG_PORT" --database postgres \
        --user postgres --tls disable 2>/dev/null
    "$bin" connections add web --type http --url "http://127.0.0.1:$NGINX_PORT" --mask email >/dev/null 2>&1
    token=$("$bin" identities add bench --groups bench)
    # Any action on PostgreSQL; on the API only GET, so its answers are masked (no `unmask`).
    cat >"$TMP/bench.cedar" <<'CEDAR'
@id("bench-all")
permit (principal in Group::"bench", action, resource in Connection::"bench");
@id("bench-get")
permit (principal in Group::"bench", action in [Action::"connect", Action::"http.get"], resource in Connection::"web");
CEDAR
    "$bin" policies set "$TMP/bench.cedar" >/dev/null
    body=$(curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$http/web/v1/customers.json")
    case $body in *'"u***@example.com"'*) ;; *) echo "the HTTP answer is not masked: $body" >&2; exit 1 ;; esac
    for mode in simple extended http; do
        run() {
            if [ "$mode" = http ]; then
                # One curl, one keep-alive connection, $1 requests; each must be a 200.
                local codes
                codes=$(curl -s -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $token" \
                    "http://127.0.0.1:$http/web/v1/customers.json#[1-$1]")
                [ "$(grep -c '^200$' <<<"$codes")" = "$1" ] || { echo "HTTP requests failed: $(sort <<<"$codes" | uniq -c)" >&2; exit 1; }
            else
                PGPASSWORD=$token PGSSLMODE=disable pgbench -n -S -M "$mode" -c 1 -t "$1" -h 127.0.0.1 \
                    -p "$listen" -U bench bench >/dev/null 2>&1
            fi
        }
        run 300
        sleep 1
        callgrind_control -z "$vpid" >/dev/null 2>&1
        run "$N"
        # Let the results and the import that follow the last statement finish.
        sleep 1
        rm -f "$TMP/cg/out.$n.$vpid".*
        callgrind_control -d "$vpid" >/dev/null 2>&1
        for _ in $(seq 1 100); do ls "$TMP/cg/out.$n.$vpid".* >/dev/null 2>&1 && break; sleep 0.1; done
        sleep 0.5
        file=$(ls -t "$TMP/cg/out.$n.$vpid".* | head -n 1)
        total=$(awk '/^(summary|totals):/ {print $2; exit}' "$file")
        printf '%-40s %-9s %14d\n' "$bin" "$mode" $((total / N))
        if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$file" "$KEEP/$(basename "$bin").$n.$mode.callgrind"; fi
    done
    kill "$vpid"
    wait "$vpid" 2>/dev/null || true
done
