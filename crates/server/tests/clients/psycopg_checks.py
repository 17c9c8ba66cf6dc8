"""psycopg 3 through the gateway, compared with a direct connection to the same server.

Usage: psycopg_checks.py GATEWAY_CONNINFO DIRECT_CONNINFO

Exits non-zero with a message naming the first difference. Run by tests/postgres_clients.rs.
"""

import sys

import psycopg
from psycopg import errors

GATEWAY, DIRECT = sys.argv[1], sys.argv[2]

QUERY = "SELECT id, item, price, shipped, tags, meta, item IS NULL FROM orders WHERE id >= %s ORDER BY id"


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: through the gateway {got!r}, directly {want!r}")
    print(f"ok: {what}")


def fetch(conninfo, binary, prepare):
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.cursor(binary=binary)
        rows = cur.execute(QUERY, (1,), prepare=prepare).fetchall()
        # Run it again: with prepare=True the second run reuses the server-side statement.
        again = cur.execute(QUERY, (1,), prepare=prepare).fetchall()
        names = [d.name for d in cur.description]
        return rows, again, names


# Text and binary results, one-off and server-side prepared statements.
for binary in (False, True):
    for prepare in (False, True):
        check(f"results binary={binary} prepare={prepare}", fetch(GATEWAY, binary, prepare), fetch(DIRECT, binary, prepare))

# A prepared statement is really prepared on the server, under psycopg's own name.
with psycopg.connect(GATEWAY, autocommit=True) as conn:
    conn.execute("SELECT item FROM orders WHERE id = %s", (1,), prepare=True).fetchall()
    names = [r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()]
    if not any(n.startswith("_pg3_") for n in names):
        sys.exit(f"no server-side prepared statement after prepare=True: {names!r}")
    print("ok: server-side prepared statement")

# executemany (psycopg sends it as one pipeline).
with psycopg.connect(GATEWAY, autocommit=True) as conn:
    conn.cursor().executemany(
        "INSERT INTO orders (id, item, price) VALUES (%s, %s, %s)",
        [(100 + i, f"item {i}", i) for i in range(50)],
    )
with psycopg.connect(DIRECT) as conn:
    count = conn.execute("SELECT count(*), sum(price) FROM orders WHERE id BETWEEN 100 AND 149").fetchone()
    check("executemany inserted every row", count, (50, sum(range(50))))

# A prepared DELETE is caught like a simple one.
with psycopg.connect(GATEWAY, autocommit=True) as conn:
    try:
        conn.execute("DELETE FROM secrets WHERE id = %s", (1,), prepare=True)
        sys.exit("a DELETE on secrets ran through the gateway")
    except errors.InsufficientPrivilege as e:
        if "no-secrets" not in str(e):
            sys.exit(f"the refusal does not name the policy: {e}")
    check("the session goes on after a refusal", conn.execute("SELECT 1").fetchone(), (1,))


def pipeline(conninfo, failing):
    """Three inserts in one pipeline (one Sync), the middle one fails: returns the error's
    SQLSTATE and which of the rows exist afterwards, and checks the connection still works."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        state = None
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO orders (id, item) VALUES (%s, 'before')", (200,))
                conn.execute(failing)
                conn.execute("INSERT INTO orders (id, item) VALUES (%s, 'after')", (201,))
        except psycopg.Error as e:
            state = e.sqlstate
        usable = conn.execute("SELECT 41 + 1").fetchone()
    with psycopg.connect(DIRECT, autocommit=True) as conn:
        exists = conn.execute("SELECT array_agg(id ORDER BY id) FROM orders WHERE id IN (200, 201)").fetchone()[0]
        conn.execute("DELETE FROM orders WHERE id IN (200, 201)")
    return state, exists, usable


# Pipeline mode: a denied statement mid-pipeline runs nothing after it, exactly as a statement
# the server itself rejects, and the connection stays usable.
refused = pipeline(GATEWAY, "DELETE FROM secrets WHERE id = 1")
failed = pipeline(DIRECT, "SELECT 1 / 0")
check("refused mid-pipeline: nothing after it runs", refused[1:], failed[1:])
check("refused mid-pipeline: SQLSTATE", refused[0], "42501")

# Pipeline mode, all allowed, with a Sync between statements.
with psycopg.connect(GATEWAY, autocommit=True) as conn:
    with conn.pipeline() as p:
        a = conn.execute("SELECT %s::int + 1", (1,))
        p.sync()
        b = conn.execute("SELECT item FROM orders WHERE id = %s", (1,))
    check("pipeline results", (a.fetchone(), b.fetchone()), ((2,), ("lamp",)))
print("all psycopg checks passed")
