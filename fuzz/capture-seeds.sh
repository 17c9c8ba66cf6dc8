#!/usr/bin/env bash
# Captures real client traffic as fuzz seeds: psql, pgbench (simple, extended, prepared) and
# psycopg talk to a throwaway PostgreSQL through a recording proxy, which writes what each client
# sent to seeds/pg_frontend/ and what the server answered to seeds/pg_backend/. The statements
# the clients ran go to seeds/sql_classify/, and text with sensitive values to seeds/mask/.
#
#   fuzz/capture-seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
missing=($(pg_missing))
install_missing "${missing[@]}"
BINDIR=$(pg_config --bindir 2>/dev/null || true)
[ -x "$BINDIR/initdb" ] || BINDIR=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
TMP=$(mktemp -d /tmp/gatehouse-seeds.XXXXXX)
chmod 755 "$TMP"
if [ "$(id -u)" = 0 ]; then RUN=(runuser -u nobody --); OWNER=nobody; else RUN=(); OWNER=$(id -un); fi
pids=()
trap bench_cleanup EXIT

SEEDS=$PWD/fuzz/seeds
mkdir -p "$SEEDS/pg_frontend" "$SEEDS/pg_backend" "$SEEDS/sql_classify" "$SEEDS/mask"
PG_PORT=$(free_port); PROXY_PORT=$(free_port)
start_postgres "$PG_PORT" 50 1

python3 - "$PROXY_PORT" "$PG_PORT" "$SEEDS" <<'PY' &
import os, socket, sys, threading
listen, upstream, seeds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
count = [0]
def pump(src, dst, sink):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            sink.append(b)
            dst.sendall(b)
    except OSError:
        pass
    finally:
        try: dst.shutdown(socket.SHUT_WR)
        except OSError: pass
def serve(client):
    server = socket.create_connection(("127.0.0.1", upstream))
    sent, answered = [], []
    a = threading.Thread(target=pump, args=(client, server, sent)); a.start()
    b = threading.Thread(target=pump, args=(server, client, answered)); b.start()
    a.join(); b.join()
    count[0] += 1
    n = count[0]
    # Cap a seed at 64 KiB: fuzzing wants many small inputs, not a whole bulk load.
    for kind, chunks in (("pg_frontend", sent), ("pg_backend", answered)):
        with open(os.path.join(seeds, kind, f"captured-{n:03}"), "wb") as f:
            f.write(b"".join(chunks)[:65536])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", listen)); s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
pids+=($!)
wait_port "$PROXY_PORT"

STATEMENTS=(
    "CREATE TABLE people (id int PRIMARY KEY, email text, card text, tags text[], meta jsonb, born date)"
    "INSERT INTO people VALUES (1, 'ada@example.com', '4242 4242 4242 4242', '{a,b}', '{\"k\": 1}', '1815-12-10')"
    "SELECT id, email, card, tags, meta, born FROM people WHERE id = 1"
    "UPDATE people SET email = 'grace@example.org' WHERE id = 1"
    "SELECT p.id, count(*) FROM people p JOIN pgbench_accounts a ON a.aid = p.id GROUP BY p.id"
    "WITH x AS (DELETE FROM people WHERE id > 100 RETURNING id) SELECT count(*) FROM x"
    "COPY people TO STDOUT WITH (FORMAT csv, HEADER true)"
    "BEGIN; SAVEPOINT s; SELECT now(); RELEASE s; COMMIT"
    "SELECT set_config('application_name', 'x', false)"
    "SELECT * FROM nope"
    "DO \$\$ BEGIN RAISE NOTICE 'ada@example.com'; END \$\$"
)
for sql in "${STATEMENTS[@]}"; do
    psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U postgres postgres -c "$sql" >/dev/null 2>&1 || true
done
printf '%s\n' "${STATEMENTS[@]}" | psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U postgres postgres >/dev/null 2>&1 || true
for mode in simple extended prepared; do
    pgbench -n -S -M "$mode" -t 3 -h 127.0.0.1 -p "$PROXY_PORT" -U postgres postgres >/dev/null 2>&1 || true
done
python3 - "$PROXY_PORT" <<'PY' || true
import sys, psycopg
with psycopg.connect(f"host=127.0.0.1 port={sys.argv[1]} user=postgres dbname=postgres") as c:
    c.execute("SELECT %s::int, %s::text, %s::numeric", (1, "ada@example.com", 19.9)).fetchall()
    c.execute("SELECT email FROM people WHERE id = %s", (1,), prepare=True).fetchall()
    with c.cursor(binary=True) as cur:
        cur.execute("SELECT id, tags, meta FROM people").fetchall()
    with c.pipeline():
        c.execute("SELECT 1"); c.execute("SELECT 2")
PY
sleep 0.5

i=0
for sql in "${STATEMENTS[@]}"; do i=$((i + 1)); printf '%s' "$sql" >"$SEEDS/sql_classify/statement-$i"; done
i=0
for text in "ada@example.com" "card 4242 4242 4242 4242 exp 12/29" "IBAN DE89 3704 0044 0532 0130 00" \
    "ssn 123-45-6789, phone +49 30 12345678" "from 192.168.1.20 and 2001:db8::1" \
    "password=hunter2 token=ghp_0123456789abcdefghijklmnopqrstuvwxyz12" "{\"email\": \"x@y.io\", \"n\": [1, 2]}"; do
    i=$((i + 1)); printf '%s' "$text" >"$SEEDS/mask/text-$i"
done
echo "seeds: $(ls "$SEEDS/pg_frontend" | wc -l) sessions, $(ls "$SEEDS/sql_classify" | wc -l) statements, $(ls "$SEEDS/mask" | wc -l) texts in fuzz/seeds"
