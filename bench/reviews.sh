#!/usr/bin/env bash
# What requests held for review cost: HELD sessions (default 300) each send a DELETE that policy
# holds for approval, and stay held while `pgbench -S` (16 clients) runs through the same
# gateway. Prints the gateway's threads and memory before and during the hold, the memory per
# held session, and pgbench's TPS without and with the held crowd (best of RUNS runs each),
# through Gatehouse and, as a control, directly.
# Starts its own PostgreSQL and Gatehouse on loopback ports picked at run time.
#
#   bench/reviews.sh                  # defaults: HELD=300 CLIENTS=16 DURATION=5 RUNS=3
#   HELD=800 bench/reviews.sh
set -euo pipefail
cd "$(dirname "$0")/.."

HELD=${HELD:-300}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-5}
RUNS=${RUNS:-3}

. bench/lib.sh
missing=($(pg_missing))
command -v curl >/dev/null 2>&1 || missing+=(curl)
install_missing "${missing[@]}"
ensure_psycopg
bench_setup

PG_PORT=$(free_port); API_PORT=$(free_port); GW_PORT=$(free_port)

echo "== PostgreSQL on $PG_PORT (max_connections $((HELD + CLIENTS + 20)))"
start_postgres "$PG_PORT" $((HELD + CLIENTS + 20)) 10

echo "== Gatehouse on $GW_PORT (recording on, hold 600 s)"
start_gatehouse "$API_PORT" "$GW_PORT" GATEHOUSE_REVIEWS_HOLD_SECONDS=600
"$GATEHOUSE" connections add bench --type postgres --host 127.0.0.1 --port "$PG_PORT" --database postgres \
    --user postgres --tls disable 2>/dev/null
BENCH_TOKEN=$("$GATEHOUSE" identities add bench --groups bench)
cat >"$TMP/bench.cedar" <<'CEDAR'
@id("bench-all")
permit (principal in Group::"bench", action, resource in Connection::"bench");

@id("deletes-need-dba")
@approval("dba")
forbid (principal, action == Action::"sql.delete", resource in Connection::"bench");
CEDAR
"$GATEHOUSE" policies set "$TMP/bench.cedar" >/dev/null

threads() { ls "/proc/$GW_PID/task" | wc -l; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status"; }
held_now() { curl -s "http://127.0.0.1:$API_PORT/metrics" | awk '/^gatehouse_held_requests / {print $2}'; }

echo "== pgbench -S, $CLIENTS clients, through Gatehouse and directly, nothing held"
TPS_BEFORE=$(best_tps gatehouse)
DIRECT_BEFORE=$(best_tps direct)
THREADS_BEFORE=$(threads)
RSS_BEFORE=$(rss_kib)

echo "== $HELD sessions, each holding a DELETE for review"
cat >"$TMP/held.py" <<'PY'
import asyncio, sys
import psycopg

async def one(conninfo, i, ready):
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    ready.append(i)
    try:
        await conn.execute(f"DELETE FROM pgbench_accounts WHERE aid = {i + 1}")
    except psycopg.Error:
        pass

async def main(conninfo, n):
    ready = []
    tasks = [asyncio.create_task(one(conninfo, i, ready)) for i in range(n)]
    await asyncio.gather(*tasks)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
PY
python3 "$TMP/held.py" "host=127.0.0.1 port=$GW_PORT dbname=bench user=bench password=$BENCH_TOKEN sslmode=disable" "$HELD" \
    >"$TMP/held.log" 2>&1 &
pids+=($!)
PEAK=$(threads)
for _ in $(seq 1 600); do
    t=$(threads); [ "$t" -gt "$PEAK" ] && PEAK=$t
    [ "$(held_now)" = "$HELD" ] && break
    sleep 0.1
done
HELD_NOW=$(held_now)
[ "$HELD_NOW" = "$HELD" ] || { echo "only $HELD_NOW of $HELD requests held; see $TMP/held.log" >&2; cat "$TMP/held.log" >&2; exit 1; }
THREADS_HELD=$(threads)
RSS_HELD=$(rss_kib)

echo "== pgbench -S, $CLIENTS clients, through Gatehouse and directly, with $HELD requests held"
TPS_DURING=$(best_tps gatehouse)
DIRECT_DURING=$(best_tps direct)
[ "$(held_now)" = "$HELD" ] || { echo "held requests were dropped during the run" >&2; exit 1; }

echo
printf '%-34s %12s %12s\n' "" "nothing held" "$HELD held"
printf '%-34s %12s %12s\n' "gateway threads" "$THREADS_BEFORE" "$THREADS_HELD"
printf '%-34s %12s %12s\n' "gateway threads, peak" "-" "$PEAK"
printf '%-34s %12s %12s\n' "gateway RSS (KiB)" "$RSS_BEFORE" "$RSS_HELD"
printf '%-34s %12s %12s\n' "TPS through Gatehouse" "$TPS_BEFORE" "$TPS_DURING"
printf '%-34s %12s %12s\n' "TPS direct (control)" "$DIRECT_BEFORE" "$DIRECT_DURING"
awk -v a="$RSS_BEFORE" -v b="$RSS_HELD" -v n="$HELD" 'BEGIN {printf "memory per held session: %.1f KiB\n", (b - a) / n}'
awk -v a="$TPS_BEFORE" -v b="$TPS_DURING" 'BEGIN {printf "TPS through Gatehouse with held sessions / without: %.3f\n", b / a}'
# The held sessions keep their upstream sessions open too: the direct runs show what that alone
# costs PostgreSQL, apart from the gateway.
awk -v a="$DIRECT_BEFORE" -v b="$DIRECT_DURING" 'BEGIN {printf "TPS direct with held sessions / without:          %.3f\n", b / a}'
