#!/usr/bin/env bash
# The web console over a big store: seeds SESSIONS sessions with EVENTS_PER events each (default
# 100,000 x 10 = a million events) into a fresh Gatehouse store, signs in with the admin token
# like a browser (the sign-in form, its CSRF cookie and the session cookie), and times pages of
# the sessions list: the first page, a page deep in the past, filters by identity, by a rare and
# a very rare outcome, a session's timeline, and the same list through the REST API. `/healthz`
# is timed as the floor: the cost of one HTTP round trip to the gateway. Prints the median and
# p95 of ROUNDS requests per page, and each median's ratio to the floor.
#
#   bench/console.sh                         # SESSIONS=100000 EVENTS_PER=10 ROUNDS=30
#   SESSIONS=300000 bench/console.sh
#
# The seeded events carry no valid MACs: the start-up chain check reports the chain as broken,
# which does not change what is timed (the gateway keeps serving; the check is waited for).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-100000}
EVENTS_PER=${EVENTS_PER:-10}
ROUNDS=${ROUNDS:-30}

. bench/lib.sh
missing=($(pg_missing))
install_missing "${missing[@]}"
bench_setup

API_PORT=$(free_port); GW_PORT=$(free_port)
echo "== Gatehouse on 127.0.0.1:$API_PORT: a fresh store"
start_gatehouse "$API_PORT" "$GW_PORT"
kill -TERM "$GW_PID"; wait "$GW_PID" 2>/dev/null || true

echo "== seeding $SESSIONS sessions with $EVENTS_PER events each"
python3 - "$TMP/gw/gatehouse.db" "$SESSIONS" "$EVENTS_PER" <<'PY'
import json, random, sqlite3, sys, time
db, sessions, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(db)
seq = (c.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0]) + 1
start = int(time.time() * 1000) - sessions * 1000
rng = random.Random(7)
rows, events = [], []
for i in range(sessions):
    sid = f"seed-{i:09d}"
    t = start + i * 1000
    masked = 3 if i % 100 == 0 else 0          # 1% of sessions masked something
    reviewed = 1 if i % 1000 == 0 else 0       # 0.1% had a request held for review
    denied = 1 if (i % 50 == 0 or reviewed) else 0
    rows.append((sid, f"svc-{i % 40}", "service", f"pg-{i % 5}", "postgres", "127.0.0.1:5000", t, t + 900,
                 "the caller ended the session", per - 2, denied, reviewed, masked))
    events.append((seq, t, sid, "session.start", json.dumps({"protocol": "postgres"}), b"\0" * 32)); seq += 1
    for k in range((per - 2) // 2):
        req = {"action": "sql.select", "request": f"SELECT * FROM public.t{k} WHERE id = {rng.randint(1, 10**6)}",
               "decision": "allow", "policies": ["apps-work"], "params": []}
        events.append((seq, t + k, sid, "request", json.dumps(req), b"\0" * 32)); seq += 1
        res = {"request_seq": seq - 1, "status": "ok", "duration_ms": 0.4, "rows": 1, "command": "SELECT 1"}
        events.append((seq, t + k, sid, "request.result", json.dumps(res), b"\0" * 32)); seq += 1
    events.append((seq, t + 900, sid, "session.end", json.dumps({"reason": "the caller ended the session"}), b"\0" * 32)); seq += 1
    if len(events) > 200000:
        c.executemany("INSERT INTO audit_events (seq, ts, session_id, kind, payload, mac) VALUES (?,?,?,?,?,?)", events)
        events.clear()
c.executemany("INSERT INTO audit_events (seq, ts, session_id, kind, payload, mac) VALUES (?,?,?,?,?,?)", events)
c.executemany("INSERT INTO sessions (id, identity, identity_kind, connection, protocol, client_addr, started_at, "
              "ended_at, end_reason, requests, denied, reviewed, masked) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
c.commit()
n = c.execute("SELECT COUNT(*) FROM audit_events").fetchone()[0]
print(f"store: {n} events, {c.execute('SELECT COUNT(*) FROM sessions').fetchone()[0]} sessions")
PY
ls -la "$TMP/gw/gatehouse.db" | awk '{printf "store file: %.0f MiB\n", $5 / 1048576}'

echo "== Gatehouse again, on the seeded store"
start_gatehouse "$API_PORT" "$GW_PORT"
for _ in $(seq 1 600); do
    curl -s "http://127.0.0.1:$API_PORT/readyz" | grep -q '"audit_chain":"checking"' || break
    sleep 0.1
done

python3 - "http://127.0.0.1:$API_PORT" "$GATEHOUSE_TOKEN" "$ROUNDS" "$SESSIONS" <<'PY'
import http.client, re, statistics, sys, time, urllib.parse
base, token, rounds, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host = urllib.parse.urlparse(base).netloc
conn = http.client.HTTPConnection(host, timeout=60)
cookies = {}

def request(method, path, body=None, headers=None):
    h = dict(headers or {})
    if cookies:
        h["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    for k, v in r.getheaders():
        if k.lower() == "set-cookie":
            name, value = v.split(";")[0].split("=", 1)
            cookies[name] = value
    return r.status, data

status, page = request("GET", "/console/signin")
csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
form = urllib.parse.urlencode({"csrf": csrf, "token": token, "next": "/console/sessions"})
status, _ = request("POST", "/console/signin/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
assert status == 303 and "gatehouse_console" in cookies, f"sign-in failed: {status}"

deep = f"seed-{sessions // 10:09d}"   # 90% of the way back
pages = [
    ("floor: /healthz", "/healthz", {}),
    ("sessions, first page", "/console/sessions", {}),
    ("sessions, live refresh (rows only)", "/console/sessions?fragment=rows", {}),
    ("sessions, a page 90% back", f"/console/sessions?after={deep}", {}),
    ("sessions of one identity", "/console/sessions?identity=svc-7", {}),
    ("sessions with masked values (1%)", "/console/sessions?outcome=masked", {}),
    ("sessions with a review (0.1%)", "/console/sessions?outcome=reviewed", {}),
    ("one session's timeline", f"/console/sessions/seed-{sessions // 2:09d}", {}),
    ("REST API: 50 sessions", "/api/v1/sessions?limit=50", {"Authorization": f"Bearer {token}"}),
]
results = []
for label, path, headers in pages:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        status, data = request("GET", path, headers=headers)
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, f"{path}: HTTP {status}: {data[:200]!r}"
    times.sort()
    results.append((label, statistics.median(times), times[int(len(times) * 0.95) - 1], len(data)))
floor = results[0][1]
print(f"{'page':40} {'median ms':>10} {'p95 ms':>8} {'bytes':>8} {'x floor':>8}")
for label, med, p95, size in results:
    print(f"{label:40} {med:10.2f} {p95:8.2f} {size:8d} {med / floor:8.1f}")
PY
