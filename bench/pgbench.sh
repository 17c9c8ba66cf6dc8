#!/usr/bin/env bash
# PostgreSQL through Gatehouse, measured against a direct connection and pgbouncer (session
# mode) in the same run. Starts its own PostgreSQL, pgbouncer and Gatehouse on loopback ports
# picked at run time, TLS off on every path, recording on in Gatehouse. Runs `pgbench -S` in the
# simple and the extended protocol at each client count, best of RUNS runs per path, and prints
# TPS, average latency, the CPU each proxy (pgbouncer, Gatehouse) spent per transaction (and the
# kernel's part of it, and for Gatehouse its recording threads' part) and its context switches,
# the ratios Gatehouse/direct and Gatehouse/pgbouncer, and the two proxies' CPU per transaction
# side by side: on a machine whose cores are all busy, that sets the ratio of their tps. It starts by
# printing what this machine charges for a wake-up round trip and for forcing a write to disk,
# the two costs that set how far any recording proxy can go.
#
#   bench/pgbench.sh                    # defaults: CLIENTS="1 16" DURATION=5 RUNS=3 SCALE=10
#   CLIENTS="1 4 16" DURATION=10 bench/pgbench.sh
#   FSYNC=off bench/pgbench.sh          # [audit] fsync: batch (default) or off
#   MASKING=0 bench/pgbench.sh          # skip the masking case (on by default: 100k rows read
#                                       # directly, through Gatehouse, and through Gatehouse masking)
#   PROFILE=1 bench/pgbench.sh          # then profile Gatehouse (perf) under 1-client pgbench -S
#   PROFILE=1 PROFILE_MODE=extended PROFILE_CLIENTS=16 bench/pgbench.sh   # another load to profile
#   PROFILE=1 KEEP_PROFILE=gh.perf ...  # and keep the perf data for `perf report -i gh.perf`
#   GATEHOUSE_BIN=/path/to/gatehouse bench/pgbench.sh   # measure that binary (compare two builds)
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-"1 16"}
DURATION=${DURATION:-5}
RUNS=${RUNS:-3}
SCALE=${SCALE:-10}
FSYNC=${FSYNC:-batch}

. bench/lib.sh
missing=($(pg_missing))
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
install_missing "${missing[@]}"
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
bench_setup
machine_costs

PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); API_PORT=$(free_port); GW_PORT=$(free_port)

echo "== PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') on $PG_PORT, scale $SCALE"
start_postgres "$PG_PORT" 100 "$SCALE"

echo "== pgbouncer on $BOUNCER_PORT (session mode)"
echo '"postgres" ""' >"$TMP/run/userlist.txt"
cat >"$TMP/run/pgbouncer.ini" <<CONF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/run/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = $TMP/run/pgbouncer.log
pidfile = $TMP/run/pgbouncer.pid
CONF
chown -R "$OWNER" "$TMP/run"
"${RUN[@]}" "$PGBOUNCER" "$TMP/run/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)
wait_port "$BOUNCER_PORT"
BOUNCER_PID=$(cat "$TMP/run/pgbouncer.pid")

echo "== Gatehouse on $GW_PORT (recording on, [audit] fsync = $FSYNC)"
start_gatehouse "$API_PORT" "$GW_PORT" GATEHOUSE_AUDIT_FSYNC="$FSYNC"
"$GATEHOUSE" connections add bench --type postgres --host 127.0.0.1 --port "$PG_PORT" --database postgres \
    --user postgres --tls disable 2>/dev/null
"$GATEHOUSE" connections add bench_masked --type postgres --host 127.0.0.1 --port "$PG_PORT" --database postgres \
    --user postgres --tls disable --mask email,credit_card 2>/dev/null
BENCH_TOKEN=$("$GATEHOUSE" identities add bench --groups bench)
cat >"$TMP/bench.cedar" <<'CEDAR'
@id("bench-all")
permit (principal in Group::"bench", action, resource in Connection::"bench");

@id("bench-masked-all-but-unmask")
permit (principal in Group::"bench", action, resource in Connection::"bench_masked")
unless { action == Action::"unmask" };
CEDAR
"$GATEHOUSE" policies set "$TMP/bench.cedar" >/dev/null

# run_one MODE CLIENTS TARGET: one pgbench run, its whole output.
run_one() {
    local mode=$1 clients=$2 target=$3 jobs=$(( $2 < 2 ? 1 : 2 ))
    local args=(-n -S -M "$mode" -c "$clients" -j "$jobs" -T "$DURATION")
    case $target in
        direct) pgbench "${args[@]}" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres ;;
        pgbouncer) pgbench "${args[@]}" -h 127.0.0.1 -p "$BOUNCER_PORT" -U postgres bench ;;
        gatehouse) PGPASSWORD=$BENCH_TOKEN PGSSLMODE=disable pgbench "${args[@]}" -h 127.0.0.1 -p "$GW_PORT" -U bench bench ;;
    esac 2>&1
}
# best_of MODE CLIENTS TARGET → "tps latency_ms cpu_us kernel_us recording_us switches" (the
# proxy's figures per transaction, "-" for a direct connection)
best_of() {
    local best_tps=0 best_lat=0 out tps lat tx=0 pid= u s r u0 s0 r0 user=0 sys=0 rec=0 switches=0 before_switches
    case $3 in pgbouncer) pid=$BOUNCER_PID ;; gatehouse) pid=$GW_PID ;; esac
    for _ in $(seq 1 "$RUNS"); do
        if [ -n "$pid" ]; then read -r u0 s0 r0 < <(cpu_split "$pid"); before_switches=$(ctx_switches "$pid"); fi
        out=$(run_one "$@")
        if [ -n "$pid" ]; then
            read -r u s r < <(cpu_split "$pid")
            user=$(( user + u - u0 )); sys=$(( sys + s - s0 )); rec=$(( rec + r - r0 ))
            switches=$(( switches + $(ctx_switches "$pid") - before_switches ))
        fi
        tx=$(( tx + $(awk -F': ' '/^number of transactions actually processed/ {print $2 + 0; exit}' <<<"$out") ))
        tps=$(awk '/^tps = / {print $3; exit}' <<<"$out")
        lat=$(awk '/^latency average = / {print $4; exit}' <<<"$out")
        if [ -z "$tps" ]; then echo "pgbench failed ($*):" >&2; echo "$out" >&2; exit 1; fi
        if awk -v a="$tps" -v b="$best_tps" 'BEGIN {exit !(a > b)}'; then best_tps=$tps; best_lat=$lat; fi
    done
    # The proxy's CPU (user + system), the kernel's part of it, its recording threads' part,
    # and its context switches, per transaction over all the runs, while it carried them.
    local per_tx="- - - -"
    if [ -n "$pid" ]; then
        per_tx=$(awk -v u="$user" -v s="$sys" -v r="$rec" -v w="$switches" -v n="$tx" -v hz="$(getconf CLK_TCK)" \
            'BEGIN {f = 1e6 / hz / n; printf "%.0f %.0f %.0f %.1f", (u + s) * f, s * f, r * f, w / n}')
    fi
    echo "$best_tps $best_lat $per_tx"
}

printf '\n%-9s %7s %-10s %8s %11s %12s %10s %13s %9s\n' mode clients path tps latency_ms proxy_cpu_us kernel_us recording_us switches
results=()
budget=()
for mode in simple extended; do
    for c in $CLIENTS; do
        declare -A tps=() lat=() cpu=() kernel=()
        for target in direct pgbouncer gatehouse; do
            read -r t l u k r w < <(best_of "$mode" "$c" "$target")
            tps[$target]=$t; lat[$target]=$l; cpu[$target]=$u; kernel[$target]=$k
            printf '%-9s %7s %-10s %8.0f %11.3f %12s %10s %13s %9s\n' "$mode" "$c" "$target" "$t" "$l" "$u" "$k" "$r" "$w"
        done
        results+=("$(awk -v m="$mode" -v c="$c" -v gt="${tps[gatehouse]}" -v dt="${tps[direct]}" -v bt="${tps[pgbouncer]}" \
            -v gl="${lat[gatehouse]}" -v dl="${lat[direct]}" -v bl="${lat[pgbouncer]}" 'BEGIN {
            printf "%-9s %7s  gatehouse/direct tps %.2f  gatehouse/pgbouncer tps %.2f  added latency vs direct %.1f us, vs pgbouncer %.1f us",
                m, c, gt/dt, gt/bt, (gl-dl)*1000, (gl-bl)*1000 }')")
        budget+=("$(printf '%-9s %7s  CPU per transaction: gatehouse %s us (%s in the kernel), pgbouncer %s us (%s in the kernel)' \
            "$mode" "$c" "${cpu[gatehouse]}" "${kernel[gatehouse]}" "${cpu[pgbouncer]}" "${kernel[pgbouncer]}")")
        unset tps lat cpu kernel
    done
done
echo
printf '%s\n' "${results[@]}"
echo
echo "When client, server and proxy keep every core busy, tps goes as the inverse of the CPU the three"
echo "spend per transaction: to match pgbouncer's tps there, Gatehouse may spend no more than pgbouncer."
printf '%s\n' "${budget[@]}"
if [ "${MASKING:-1}" != 0 ]; then
    echo
    echo "== masking: SELECT * of a 10-column, 100000-row table with emails and card numbers (best of $RUNS)"
    psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres <<'SQL' >/dev/null
CREATE TABLE masking_bench AS
SELECT i AS id, 'user' || i || '@example.com' AS email, '4242 4242 4242 4242' AS card,
       'customer ' || i AS name, 'Springfield' AS city, 'no sensitive data here' AS note,
       (i * 1.5)::numeric(12,2) AS amount, now() AS created, i % 7 AS bucket, i % 2 = 0 AS active
FROM generate_series(1, 100000) AS i;
SQL
    read_all() {
        case $1 in
            direct) psql -X -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 'SELECT * FROM masking_bench' postgres ;;
            plain) PGPASSWORD=$BENCH_TOKEN PGSSLMODE=disable psql -X -A -t -h 127.0.0.1 -p "$GW_PORT" -U bench \
                -c 'SELECT * FROM masking_bench' bench ;;
            masked) PGPASSWORD=$BENCH_TOKEN PGSSLMODE=disable psql -X -A -t -h 127.0.0.1 -p "$GW_PORT" -U bench \
                -c 'SELECT * FROM masking_bench' bench_masked ;;
        esac
    }
    declare -A secs=()
    for target in direct plain masked; do
        best=
        for _ in $(seq 1 "$RUNS"); do
            start=$(date +%s.%N)
            rows=$(read_all "$target" | wc -l)
            end=$(date +%s.%N)
            [ "$rows" = 100000 ] || { echo "read $rows rows from $target, not 100000" >&2; exit 1; }
            t=$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')
            if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN {exit !(a < b)}'; then best=$t; fi
        done
        secs[$target]=$best
        case $target in direct) label=direct ;; plain) label=gatehouse ;; masked) label="gatehouse, masking" ;; esac
        printf '%-20s %8.3f s %10.0f rows/s\n' "$label" "$best" "$(awk -v t="$best" 'BEGIN {print 100000 / t}')"
    done
    if read_all masked | grep -q 'user1@example.com'; then echo "masking failed: an address came through" >&2; exit 1; fi
    awk -v d="${secs[direct]}" -v p="${secs[plain]}" -v m="${secs[masked]}" 'BEGIN {
        printf "masked/unmasked time %.2f (target < 2)  masked/direct %.2f  unmasked/direct %.2f\n", m / p, m / d, p / d }'
fi

events=$("$GATEHOUSE" audit verify 2>&1 || true)
echo
echo "audit trail after the run: $events"

if [ -n "${PROFILE:-}" ]; then
    command -v perf >/dev/null 2>&1 || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf
    echo
    PROFILE_MODE=${PROFILE_MODE:-simple} PROFILE_CLIENTS=${PROFILE_CLIENTS:-1}
    echo "== where Gatehouse spends its CPU under pgbench -S -M $PROFILE_MODE -c $PROFILE_CLIENTS (perf, self time)"
    perf record -q -F 4999 -g -o "$TMP/perf.data" -p "$GW_PID" -- sleep "$DURATION" >"$TMP/perf.log" 2>&1 &
    perf_pid=$!
    before=$(cpu_ticks "$GW_PID")
    out=$(run_one "$PROFILE_MODE" "$PROFILE_CLIENTS" gatehouse)
    after=$(cpu_ticks "$GW_PID")
    wait "$perf_pid" || { echo "perf failed:"; cat "$TMP/perf.log"; }
    awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        /^tps = / { tps = $3 }
        /^number of transactions actually processed/ { split($0, f, ": "); tx = f[2] + 0 }
        END { printf "tps while profiling: %.0f; Gatehouse CPU per transaction: %.1f us (user+system, %d transactions)\n", tps, ticks / hz * 1e6 / tx, tx }' <<<"$out"
    if [ -n "${KEEP_PROFILE:-}" ]; then cp "$TMP/perf.data" "$KEEP_PROFILE"; fi
    echo "-- by thread"
    perf report -i "$TMP/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12 || true
    echo "-- by function"
    perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -45 || true
fi
