"""Runs one statement through psycopg 3 and prints what the caller saw, as JSON.

usage: psycopg_exec.py CONNINFO SQL [PARAMS_JSON]

With PARAMS_JSON (a JSON array) the statement is sent with bound parameters (the extended
protocol); without, as written. The output has "ok", "rowcount", "rows", the server's
"sqlstate" and "message" on an error, and every notice received ("notices").
"""

import json
import sys

import psycopg


def main():
    conninfo, sql = sys.argv[1], sys.argv[2]
    params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    notices = []
    out = {"ok": False, "notices": notices}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                out["ok"] = True
                out["rowcount"] = cur.rowcount
                out["rows"] = [list(map(str, r)) for r in cur.fetchall()] if cur.description else []
        except psycopg.Error as e:
            out["sqlstate"] = e.sqlstate
            out["message"] = e.diag.message_primary
    print(json.dumps(out))


if __name__ == "__main__":
    main()
