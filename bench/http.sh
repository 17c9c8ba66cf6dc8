#!/usr/bin/env bash
# HTTP through Gatehouse against haproxy: in one run, nginx (Debian's) serves a small JSON body
# with email addresses on loopback, and wrk fetches it directly, through haproxy in HTTP mode,
# and through Gatehouse (a policy that allows the bench identity, recording on, masking of
# emails on the JSON body). Prints requests/s and p50/p99 latency per path (best of RUNS runs by
# requests/s) and the ratios Gatehouse/haproxy. Installs nginx, haproxy and wrk if missing.
#
#   bench/http.sh                        # defaults: CONNECTIONS=16 THREADS=2 DURATION=5 RUNS=3
#   CONNECTIONS=1 bench/http.sh          # one connection: latency
#   MASK=0 bench/http.sh                 # the connection without masking (recording stays on)
#   PROFILE=1 bench/http.sh              # then where Gatehouse spends its CPU (perf, self time)
#   PROFILE=1 KEEP_PROFILE=gh.perf ...   # and keep the perf data for `perf report -i gh.perf`
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
DURATION=${DURATION:-5}
RUNS=${RUNS:-3}
[ "$THREADS" -le "$CONNECTIONS" ] || THREADS=$CONNECTIONS

. bench/lib.sh
missing=($(pg_missing))
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
install_missing "${missing[@]}"
PATH=$PATH:/usr/sbin
bench_setup
machine_costs

NGINX_PORT=$(free_port); HAPROXY_PORT=$(free_port); API_PORT=$(free_port); PG_LISTEN=$(free_port)
HTTP_PORT=$(free_port)

echo "== nginx on $NGINX_PORT"
start_nginx "$NGINX_PORT"

echo "== haproxy (HTTP mode) on $HAPROXY_PORT"
cat >"$TMP/haproxy.cfg" <<CONF
global
    nbthread 2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend nginx
backend nginx
    http-reuse always
    server n1 127.0.0.1:$NGINX_PORT
CONF
haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$HAPROXY_PORT"

echo "== Gatehouse on $HTTP_PORT (recording on, emails masked)"
GATEHOUSE_LISTEN_HTTP="127.0.0.1:$HTTP_PORT" start_gatehouse "$API_PORT" "$PG_LISTEN"
if [ "${MASK:-1}" = 1 ]; then
    "$GATEHOUSE" connections add web --type http --url "http://127.0.0.1:$NGINX_PORT" --mask email >/dev/null
else
    "$GATEHOUSE" connections add web --type http --url "http://127.0.0.1:$NGINX_PORT" >/dev/null
fi
BENCH_TOKEN=$("$GATEHOUSE" identities add bench --groups bench)
cat >"$TMP/bench.cedar" <<'CEDAR'
@id("bench-get")
permit (principal in Group::"bench", action in [Action::"connect", Action::"http.get"], resource in Connection::"web");
CEDAR
"$GATEHOUSE" policies set "$TMP/bench.cedar" >/dev/null
masked=$(curl -s -H "Authorization: Bearer $BENCH_TOKEN" "http://127.0.0.1:$HTTP_PORT/web/v1/customers.json")
case "${MASK:-1}:$masked" in
    1:*'u***@example.com'* | 0:*'user0@example.com'*) ;;
    *) echo "Gatehouse's answer is not what MASK=${MASK:-1} means: $masked" >&2; exit 1 ;;
esac

# run NAME URL [HEADER]: the best of $RUNS wrk runs by requests/s, as "rps p50_ms p99_ms".
run() {
    local best="0 0 0" url=$2 out rps p50 p99
    local args=(-t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --latency)
    [ -n "${3:-}" ] && args+=(-H "$3")
    for _ in $(seq 1 "$RUNS"); do
        out=$(wrk "${args[@]}" "$url")
        if echo "$out" | grep -q 'Non-2xx'; then echo "$1: non-2xx answers" >&2; echo "$out" >&2; exit 1; fi
        rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
        p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
        p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
        best=$(python3 - "$best" "$rps" "$p50" "$p99" <<'PY'
import sys
def ms(t):
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * f
    return float(t)
best = sys.argv[1].split()
rps, p50, p99 = float(sys.argv[2]), ms(sys.argv[3]), ms(sys.argv[4])
print(f"{rps:.0f} {p50:.3f} {p99:.3f}" if rps > float(best[0]) else sys.argv[1])
PY
)
    done
    echo "$best"
}

echo "== wrk, $CONNECTIONS connections, $THREADS threads, ${DURATION}s, best of $RUNS"
DIRECT=$(run direct "http://127.0.0.1:$NGINX_PORT/v1/customers.json")
HAPROXY=$(run haproxy "http://127.0.0.1:$HAPROXY_PORT/v1/customers.json")
GATE=$(run gatehouse "http://127.0.0.1:$HTTP_PORT/web/v1/customers.json" "Authorization: Bearer $BENCH_TOKEN")

python3 - "$DIRECT" "$HAPROXY" "$GATE" "${MASK:-1}" <<'PY'
import sys
label = "gatehouse (masking, recording)" if sys.argv[4] == "1" else "gatehouse (recording)"
rows = [("direct", sys.argv[1]), ("haproxy", sys.argv[2]), (label, sys.argv[3])]
parsed = {name: [float(x) for x in vals.split()] for name, vals in rows}
print(f"{'path':<32} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
for name, _ in rows:
    rps, p50, p99 = parsed[name]
    print(f"{name:<32} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f}")
g, h = parsed[label], parsed["haproxy"]
print(f"gatehouse/haproxy: throughput {g[0] / h[0]:.2f} (target >= 0.80), p50 latency {g[1] / h[1]:.2f} (target <= 1.20)")
PY

if [ -n "${PROFILE:-}" ]; then
    command -v perf >/dev/null 2>&1 || install_missing linux-perf
    echo
    echo "== where Gatehouse spends its CPU under wrk, $CONNECTIONS connections (perf, self time)"
    perf record -q -F 4999 -g -o "$TMP/perf.data" -p "$GW_PID" -- sleep "$DURATION" >"$TMP/perf.log" 2>&1 &
    perf_pid=$!
    before=$(cpu_ticks "$GW_PID")
    out=$(wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" -H "Authorization: Bearer $BENCH_TOKEN" \
        "http://127.0.0.1:$HTTP_PORT/web/v1/customers.json")
    after=$(cpu_ticks "$GW_PID")
    wait "$perf_pid" || { echo "perf failed:"; cat "$TMP/perf.log"; }
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
        'BEGIN { printf "Gatehouse CPU per request: %.1f us (user+system, %d requests)\n", ticks / hz * 1e6 / n, n }'
    if [ -n "${KEEP_PROFILE:-}" ]; then cp "$TMP/perf.data" "$KEEP_PROFILE"; fi
    echo "-- by thread"
    perf report -i "$TMP/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12 || true
    echo "-- by function"
    perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40 || true
fi
