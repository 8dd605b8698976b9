#!/usr/bin/env python
"""/history latency on a large history: 1,000,000 messages in ~20,000 conversations.

    .venv/bin/python -m bench.history [--quick] [--messages N] [--rebuild] [--backend sqlite|postgres|both]

The database is built once with the project's own schema and cached under .cache/bench/ (git-ignored);
reruns reuse it (bench/history_data.py says what it holds). The requests: bench/history_requests.py.

Then the gateway is started on that file (gunicorn, the project's gunicorn.conf.py, 1 worker) and
each request below is timed over HTTP from one sequential keep-alive client (requests rotated so
drift hits all alike), alongside the same db.py call in-process (SQL only, no JSON or HTTP).
Goal: p95 <= 10 ms. Rows over the goal get their EXPLAIN QUERY PLAN printed (SQLite).

--backend postgres (or both, side by side in one run): a throwaway PostgreSQL (tests/pg_server.py's
initdb + pg_ctl) gets the same messages through history/move.py's mover (COPY, ids kept), then ANALYZE
(what autovacuum does on its own after a bulk load), and a second gateway runs with CHAT_DB=its URL.
"""
import argparse
import os
import random
import sys
import time

import db
from bench._common import Client, Servers, fmt, header, md_table, pct, start_fake
from bench.history_data import RARE_COUNT, cached_db
from bench.history_requests import explain, internals_for, pick, requests_for
from helpers import start_gateway

GOAL_MS = 10.0
HISTORY_MODULES = ("db", "history", "db_postgres", "db_maintenance", "db_move", "db_journal")  # (the last four: before history/)


def timed_rounds(rounds, arms, conns, clients, reqs, inner):
    """3 warm-up rounds (page cache, statement cache), then `rounds` timed ones, order shuffled each round:
    (HTTP ms, SQL ms) per arm and request, and past_turns ms per arm and session."""
    http_ms = [[[] for _ in reqs] for _ in arms]
    sql_ms = [[[] for _ in reqs] for _ in arms]
    inner_ms = [[[] for _ in inner] for _ in arms]
    for r in range(-3, rounds):
        order = [(k, i) for k in range(len(arms)) for i in range(len(reqs))]
        random.Random(r).shuffle(order)
        for k, i in order:
            label, url, fn = reqs[i]
            st, raw, dt = clients[k].request("GET", url)
            if st != 200:
                raise RuntimeError(f"{label}: HTTP {st}: {raw[:300]!r}")
            t0 = time.perf_counter()
            fn(arms[k][2], conns[k])
            ds = time.perf_counter() - t0
            if r >= 0:
                http_ms[k][i].append(dt * 1000)
                sql_ms[k][i].append(ds * 1000)
        for k in range(len(arms)):
            for j, (_, sid) in enumerate(inner):
                t0 = time.perf_counter()
                arms[k][3].past_turns(conns[k], sid)
                if r >= 0:
                    inner_ms[k][j].append((time.perf_counter() - t0) * 1000)
    return http_ms, sql_ms, inner_ms


def load_postgres(path):
    """A throwaway PostgreSQL holding the SQLite file's history: (server, URL, a line on the load)."""
    import pg_server
    from history import move
    server = pg_server.PostgresServer()
    try:
        url = server.new_database()
        t0 = time.perf_counter()
        moved = move.migrate_to_postgres(path, url)
        t_move = time.perf_counter() - t0
        conn = db.open_connection(url)
        t0 = time.perf_counter()
        conn.execute("ANALYZE")
        t_analyze = time.perf_counter() - t0
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
        conn.close()
    except BaseException:
        server.stop()
        raise
    note = (f"PostgreSQL {version}: {moved['messages']:,} messages moved by history/move.py in "
            f"{t_move:.0f} s (COPY + tsvector + indexes), ANALYZE {t_analyze:.1f} s, {size / 2**20:,.0f} MB.")
    print(note, file=sys.stderr, flush=True)
    return server, url, note


def load_module(name, path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed requests (the DB is the same, once built)")
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--conversations", type=int, help="default: messages / 50")
    ap.add_argument("--rounds", type=int, help="timed rounds over all requests (default 60, quick 15)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached database")
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite",
                    help="history backend(s) to measure; postgres loads the same messages into a throwaway server")
    ap.add_argument("--ab", metavar="PATH",
                    help="also run the gateway and db.py of this other checkout (e.g. a patched copy), side by side")
    a = ap.parse_args()
    if a.ab and a.backend != "sqlite":  # before the minutes of building
        ap.error("--ab compares two checkouts on SQLite: use it without --backend")
    return a

def ab_arm(other):
    """(name, repo, db module, exchange module) of another checkout."""
    other = os.path.abspath(other)
    # its db.py imports its own history package (older checkouts: its db_*.py), not ours
    ours = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] in HISTORY_MODULES}
    sys.path.insert(0, other)
    try:
        db_b = load_module("db_ab", os.path.join(other, "db.py"))
        sys.modules["db"] = db_b  # exchange.py of the other checkout imports `db`
        ex_path = os.path.join(other, "gateway", "exchange.py")  # older checkouts: exchange.py at the top
        ex_b = load_module("exchange_ab", ex_path if os.path.exists(ex_path) else os.path.join(other, "exchange.py"))
    finally:
        sys.path.remove(other)
        for m in [m for m in sys.modules if m.split(".")[0] in HISTORY_MODULES]:
            del sys.modules[m]  # (theirs live on in db_b)
        sys.modules.update(ours)
    return other, other, db_b, ex_b


def measure(rounds, arms, conns, targets, reqs, inner):
    """A gunicorn gateway per arm on its history, then timed_rounds through them."""
    with Servers() as S:
        fake = S.add(start_fake())
        clients = []
        for (_, repo, _, _), target in zip(arms, targets):
            kw = {"repo": repo} if repo else {}
            clients.append(Client(S.add(start_gateway("http://127.0.0.1:9", fake, target, gunicorn_workers=1,
                                                      **kw)).base_url))
        try:
            return timed_rounds(rounds, arms, conns, clients, reqs, inner)
        finally:
            for c in clients:
                c.close()


def main():
    a = parse_args()
    path, meta, built_now = cached_db(a)
    rounds = a.rounds or (15 if a.quick else 60)
    conn = db.connect(path)
    p = pick(conn)
    reqs, inner = requests_for(p), internals_for(p)
    from gateway import exchange
    arms, conns, targets = [], [], []  # (name, repo, db module, exchange module); per arm its connection, CHAT_DB
    if a.backend in ("sqlite", "both"):
        arms.append(("SQLite" if a.backend == "both" else "this checkout", None, db, exchange))
        conns.append(conn)
        targets.append(path)
    if a.ab:
        arms.append(ab_arm(a.ab))
        conns.append(conn)
        targets.append(path)
    pg = pg_note = None
    if a.backend in ("postgres", "both"):
        pg, url, pg_note = load_postgres(path)
        arms.append(("PostgreSQL", None, db, exchange))
        conns.append(db.open_connection(url))
        targets.append(url)
    try:
        results = measure(rounds, arms, conns, targets, reqs, inner)
    finally:
        if pg:
            conns[-1].close()
            pg.stop()
    header(f"/history on {meta['messages']:,} messages", [
        f"DB: {meta['messages']:,} messages, {meta['conversations']:,} conversations (median "
        f"{p['median_n']} messages, largest {p['largest_n']}), {os.path.getsize(path) / 2**20:,.0f} MB; "
        f"'the' in {meta['doc_counts']['the']:,} messages, 'что' in {meta['doc_counts']['что']:,}, "
        f"the rare words in {RARE_COUNT} each. Built in "
        f"{meta.get('total_s') or round(meta['generate_s'] + meta['insert_s'] + meta['fts_s']):g} s "
        f"({'just now' if built_now else 'cached'}: text {meta['generate_s']} s, insert {meta['insert_s']} s, "
        f"FTS rebuild {meta['fts_s']} s). No ANALYZE (the app never runs it).",
        f"Gateway: gunicorn, 1 gthread worker; 1 sequential keep-alive client; {rounds} rounds, request order "
        f"shuffled each round; SQL = the same db.py call in-process (no JSON/HTTP). Goal: HTTP p95 ≤ {GOAL_MS:g} ms."]
        + ([pg_note] if pg else []))
    report(arms, reqs, inner, results, conn, explain_slow=a.backend != "postgres")
    conn.close()


def report(arms, reqs, inner, results, conn, explain_slow):
    """The tables (one column group per arm), then the query plans of the first arm's requests over the goal."""
    http_ms, sql_ms, inner_ms = results
    heads = ["request"]
    for k in range(len(arms)):
        tag = "" if len(arms) == 1 else f" ({'AB'[k]})"
        heads += [f"HTTP p50{tag}", f"HTTP p95{tag}", f"SQL p50{tag}", f"SQL p95{tag}"]
    heads.append("≤ 10 ms")
    rows, slow = [], []
    for i, (label, url, fn) in enumerate(reqs):
        row = [label]
        for k in range(len(arms)):
            h, s_ = http_ms[k][i], sql_ms[k][i]
            row += [fmt(pct(h, 50)), fmt(pct(h, 95)), fmt(pct(s_, 50)), fmt(pct(s_, 95))]
        marks = ["✓" if pct(http_ms[k][i], 95) <= GOAL_MS else "✗" for k in range(len(arms))]
        row.append(" / ".join(marks))
        rows.append(row)
        if pct(http_ms[0][i], 95) > GOAL_MS and explain_slow:
            slow.append((label, fn))
    if len(arms) > 1:
        print(f"A = {arms[0][0]}, B = {arms[1][0]}\n")
    print(md_table(heads, rows))
    print()
    irows = [[label] + [f"{fmt(pct(inner_ms[k][j], 50))} / {fmt(pct(inner_ms[k][j], 95))}" for k in range(len(arms))]
             for j, (label, _) in enumerate(inner)]
    print(md_table(["per question (SQL only)"] + [f"p50 / p95 ms{'' if len(arms) == 1 else (' (A)', ' (B)')[k]}"
                                                  for k in range(len(arms))], irows))
    for label, fn in slow:
        print(f"\nEXPLAIN QUERY PLAN, {label} (this checkout):")
        for sql, plan in explain(conn, db, fn):
            print(f"    {sql[:150]}{'…' if len(sql) > 150 else ''}")
            for line in plan:
                print(f"      - {line}")


if __name__ == "__main__":
    main()
