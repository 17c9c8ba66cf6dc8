#!/usr/bin/env bash
# Gatehouse's user-space instructions per `pgbench -S` transaction, one client, simple and
# extended protocol, counted by valgrind's callgrind. Unlike TPS and CPU time, the count does
# not depend on what else the machine is doing, so two builds can be compared on a busy or
# shared machine: a change that saves work shows up however noisy the timings are. (The count
# leaves out the kernel's work: sends, receives, file writes and wake-ups; bench/pgbench.sh
# measures those. Under valgrind, SHA-256 runs without the CPU's SHA instructions, so it
# weighs more here than it does natively.)
#
# Starts its own PostgreSQL on a loopback port picked at run time, then each build in turn
# under callgrind (recording on, default settings), warms it up, and counts N transactions.
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
install_missing "${missing[@]}"
if [ "$#" -gt 0 ]; then GATEHOUSE_BIN=$1; fi
bench_setup
builds=("$@")
[ "${#builds[@]}" -gt 0 ] || builds=("$GATEHOUSE")

PG_PORT=$(free_port)
echo "== PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') on $PG_PORT, scale 1"
start_postgres "$PG_PORT" 20 1
mkdir -p "$TMP/cg" && chmod 777 "$TMP/cg"

printf '\n%-40s %-9s %14s\n' build protocol instructions/txn
n=0
for bin in "${builds[@]}"; do
    n=$((n + 1))
    bin=$(realpath "$bin")
    api=$(free_port); listen=$(free_port); data="$TMP/gw$n"
    env -u GATEHOUSE_TOKEN -u GATEHOUSE_SERVER GATEHOUSE_LISTEN_API="127.0.0.1:$api" \
        GATEHOUSE_LISTEN_POSTGRES="127.0.0.1:$listen" GATEHOUSE_LISTEN_HTTP= GATEHOUSE_LOG_LEVEL=warn \
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
    token=$("$bin" identities add bench --groups bench)
    printf '@id("bench-all")\npermit (principal in Group::"bench", action, resource in Connection::"bench");\n' \
        >"$TMP/bench.cedar"
    "$bin" policies set "$TMP/bench.cedar" >/dev/null
    for mode in simple extended; do
        run() { PGPASSWORD=$token PGSSLMODE=disable pgbench -n -S -M "$mode" -c 1 -t "$1" -h 127.0.0.1 \
            -p "$listen" -U bench bench >/dev/null 2>&1; }
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
