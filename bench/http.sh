#!/usr/bin/env bash
# HTTP through Gatehouse against haproxy: in one run, nginx (Debian's) serves a small JSON body
# with email addresses on loopback, and wrk fetches it directly, through haproxy in HTTP mode,
# and through Gatehouse (a policy that allows the bench identity, recording on, masking of
# emails on the JSON body). Prints requests/s and p50/p99 latency per path (best of RUNS runs by
# requests/s), the CPU per request of each proxy (with the kernel's part, and Gatehouse's recording
# threads' part) and of nginx and wrk, the ratios Gatehouse/haproxy, and the most CPU per request
# Gatehouse could spend and still reach 0.8x haproxy's requests/s on a machine whose cores are
# all busy. Installs nginx, haproxy and wrk if missing.
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
NGINX_PID=${pids[-1]}

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
HAPROXY_PID=$!
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

# run NAME URL [HEADER]: the best of $RUNS wrk runs by requests/s, as "rps p50_ms p99_ms", then
# CPU per request over all the runs: the proxy's (0 for none), the kernel's part of it, its
# recording threads' part (Gatehouse's), and nginx's and wrk's together.
run() {
    local best="0 0 0" url=$2 out rps p50 p99 proxy= u s r u0 s0 r0 n0 n1 w
    local user=0 sys=0 rec=0 others=0 requests=0 TIMEFORMAT='%U %S'
    case $1 in haproxy) proxy=$HAPROXY_PID ;; gatehouse) proxy=$GW_PID ;; esac
    local args=(-t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --latency)
    [ -n "${3:-}" ] && args+=(-H "$3")
    for _ in $(seq 1 "$RUNS"); do
        [ -z "$proxy" ] || read -r u0 s0 r0 < <(cpu_split "$proxy")
        n0=$(cpu_split $(pgrep -P "$NGINX_PID") | awk '{print $1 + $2}')
        { time wrk "${args[@]}" "$url" >"$TMP/wrk.out"; } 2>"$TMP/wrk.time"
        out=$(cat "$TMP/wrk.out")
        n1=$(cpu_split $(pgrep -P "$NGINX_PID") | awk '{print $1 + $2}')
        if [ -n "$proxy" ]; then
            read -r u s r < <(cpu_split "$proxy")
            user=$(( user + u - u0 )); sys=$(( sys + s - s0 )); rec=$(( rec + r - r0 ))
        fi
        # wrk's seconds, as clock ticks like the rest.
        w=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f", ($1 + $2) * hz}' "$TMP/wrk.time")
        others=$(( others + n1 - n0 + w ))
        requests=$(( requests + $(echo "$out" | awk '/requests in/ {print $1}') ))
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
    echo "$best $(awk -v u="$user" -v s="$sys" -v r="$rec" -v o="$others" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {f = 1e6 / hz / n; printf "%.1f %.1f %.1f %.1f", (u + s) * f, s * f, r * f, o * f}')"
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
print(f"{'path':<32} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'proxy_cpu_us':>13} {'kernel_us':>10} {'recording_us':>13} {'nginx+wrk_us':>13}")
for name, _ in rows:
    rps, p50, p99, cpu, kernel, rec, others = parsed[name]
    proxy = (f"{cpu:>13.1f} {kernel:>10.1f} {rec:>13.1f}" if name != "direct" else f"{'-':>13} {'-':>10} {'-':>13}")
    print(f"{name:<32} {rps:>8.0f} {p50:>7.3f} {p99:>7.3f} {proxy} {others:>13.1f}")
g, h = parsed[label], parsed["haproxy"]
print(f"gatehouse/haproxy: throughput {g[0] / h[0]:.2f} (target >= 0.80), p50 latency {g[1] / h[1]:.2f} (target <= 1.20)")
# On a machine whose cores are all busy, requests/s goes as the inverse of the CPU that nginx, wrk
# and the proxy spend per request together; nginx's and wrk's share is taken from the haproxy run.
budget = (h[3] + h[6]) / 0.8 - h[6]
print(f"When nginx, wrk and the proxy keep every core busy, requests/s goes as the inverse of the CPU they")
print(f"spend per request: for 0.80x haproxy's requests/s, Gatehouse may spend at most {budget:.1f} us per request")
print(f"(haproxy {h[3]:.1f} us, nginx and wrk {h[6]:.1f} us); it spends {g[3]:.1f} us ({g[4]:.1f} in the kernel, {g[5]:.1f} in its recording threads).")
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
