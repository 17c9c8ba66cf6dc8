#!/usr/bin/env bash
# Load held: IDLE authenticated sessions (default 1000) stay open through Gatehouse while
# `pgbench -S` (16 clients) runs through it. Prints the gateway's memory per idle session, busy
# TPS with and without the idle crowd (best of RUNS runs each; directly too, as a control), and how many idle sessions were
# dropped (each must still answer afterwards). Starts its own PostgreSQL (max_connections raised
# to fit) and Gatehouse on loopback ports picked at run time.
#
#   bench/idle.sh                     # defaults: IDLE=1000 CLIENTS=16 DURATION=5 RUNS=3
#   IDLE=2000 bench/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE=${IDLE:-1000}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-5}
RUNS=${RUNS:-3}

. bench/lib.sh
missing=($(pg_missing))
install_missing "${missing[@]}"
ensure_psycopg
bench_setup
# A thousand sessions need a thousand file descriptors on each side, and then some.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PG_PORT=$(free_port); API_PORT=$(free_port); GW_PORT=$(free_port)
echo "== PostgreSQL on $PG_PORT (max_connections $((IDLE + CLIENTS + 20)))"
start_postgres "$PG_PORT" $((IDLE + CLIENTS + 20)) 10
echo "== Gatehouse on $GW_PORT (recording on)"
start_gatehouse "$API_PORT" "$GW_PORT"
"$GATEHOUSE" connections add bench --type postgres --host 127.0.0.1 --port "$PG_PORT" --database postgres \
    --user postgres --tls disable 2>/dev/null
BENCH_TOKEN=$("$GATEHOUSE" identities add bench --groups bench)
cat >"$TMP/bench.cedar" <<'CEDAR'
@id("bench-all")
permit (principal in Group::"bench", action, resource in Connection::"bench");
CEDAR
"$GATEHOUSE" policies set "$TMP/bench.cedar" >/dev/null

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status"; }

echo "== pgbench -S, $CLIENTS clients, through Gatehouse and directly, no idle sessions"
TPS_ALONE=$(best_tps gatehouse)
DIRECT_ALONE=$(best_tps direct)
RSS_BEFORE=$(rss_kib)

echo "== $IDLE idle sessions"
cat >"$TMP/idle.py" <<'PY'
import asyncio, os, sys
import psycopg

async def main(conninfo, n, ready, go):
    conns = []
    for i in range(0, n, 50):
        batch = await asyncio.gather(*[psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                                       for _ in range(i, min(n, i + 50))])
        conns.extend(batch)
    for c in conns:
        await c.execute("SELECT 1")
    open(ready, "w").write(str(len(conns)))
    while not os.path.exists(go):
        await asyncio.sleep(0.2)
    alive = 0
    for c in conns:
        try:
            await (await c.execute("SELECT 1")).fetchone()
            alive += 1
        except psycopg.Error:
            pass
    print(f"{alive} {len(conns)}")

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
PY
python3 "$TMP/idle.py" "host=127.0.0.1 port=$GW_PORT dbname=bench user=bench password=$BENCH_TOKEN sslmode=disable" \
    "$IDLE" "$TMP/ready" "$TMP/go" >"$TMP/idle.out" 2>"$TMP/idle.err" &
IDLE_PID=$!
pids+=("$IDLE_PID")
for _ in $(seq 1 1200); do [ -s "$TMP/ready" ] && break; kill -0 "$IDLE_PID" 2>/dev/null || break; sleep 0.1; done
[ -s "$TMP/ready" ] || { echo "the idle sessions did not open:" >&2; cat "$TMP/idle.err" >&2; exit 1; }
sleep 1
RSS_IDLE=$(rss_kib)

echo "== pgbench -S, $CLIENTS clients, through Gatehouse and directly, with $IDLE idle sessions"
TPS_CROWD=$(best_tps gatehouse)
DIRECT_CROWD=$(best_tps direct)
touch "$TMP/go"
wait "$IDLE_PID" || true
read -r ALIVE OPENED <"$TMP/idle.out" || { echo "the idle client failed:" >&2; cat "$TMP/idle.err" >&2; exit 1; }

echo
printf '%-40s %12s\n' "idle sessions opened" "$OPENED"
printf '%-40s %12s\n' "idle sessions dropped" "$((OPENED - ALIVE))"
printf '%-40s %12s\n' "gateway RSS without / with idle (KiB)" "$RSS_BEFORE / $RSS_IDLE"
awk -v a="$RSS_BEFORE" -v b="$RSS_IDLE" -v n="$OPENED" 'BEGIN {printf "%-40s %12.1f\n", "gateway memory per idle session (KiB)", (b - a) / n}'
printf '%-40s %12s\n' "TPS through Gatehouse alone" "$TPS_ALONE"
printf '%-40s %12s\n' "TPS through Gatehouse with the idle crowd" "$TPS_CROWD"
awk -v a="$TPS_ALONE" -v b="$TPS_CROWD" 'BEGIN {printf "%-40s %12.1f%%\n", "TPS loss through Gatehouse", (1 - b / a) * 100}'
# The idle sessions keep their upstream sessions open too: the direct runs show what 1,000 more
# PostgreSQL backends alone cost, apart from the gateway.
printf '%-40s %12s\n' "TPS direct alone (control)" "$DIRECT_ALONE"
printf '%-40s %12s\n' "TPS direct with the idle crowd" "$DIRECT_CROWD"
awk -v a="$DIRECT_ALONE" -v b="$DIRECT_CROWD" 'BEGIN {printf "%-40s %12.1f%%\n", "TPS loss direct", (1 - b / a) * 100}'
