"""What bench/history.py asks the gateway and db.py: the sessions and ids it picks from the built history,
and the requests (each an HTTP path and the same db.py call in-process)."""
import urllib.parse

from bench.history_data import RARE_EN, RARE_RU


def pick(conn):
    """Ids and sessions the requests use: a mid-history id, a typical and the largest session."""
    max_id = conn.execute("SELECT max(id) FROM messages").fetchone()[0]
    sizes = conn.execute("SELECT conversation_id, count(*) AS n, max(id) - min(id) FROM messages "
                         "GROUP BY conversation_id ORDER BY n").fetchall()
    typical = next(s for s, n, _ in sizes if n >= 50)  # the smallest with >= 50 messages (median is far lower)
    largest, largest_n, _ = sizes[-1]
    widest, widest_n, widest_span = max(sizes, key=lambda r: r[2])  # spread over the most history
    median_n = sizes[len(sizes) // 2][1]
    mid_updated = conn.execute("SELECT updated_at FROM conversations ORDER BY updated_at LIMIT 1 OFFSET ?",
                               (len(sizes) // 2,)).fetchone()[0]
    return {"mid_id": max_id // 2, "typical": typical, "typical_n": next(n for s, n, _ in sizes if s == typical),
            "largest": largest, "largest_n": largest_n, "median_n": median_n, "mid_updated": mid_updated,
            "widest": widest, "widest_n": widest_n, "widest_span": widest_span}


def requests_for(p):
    """(label, URL path, in-process callable(db_module, conn) doing the same SQL)."""
    mid, typ, big = p["mid_id"], p["typical"], p["largest"]
    q = urllib.parse.quote
    return [
        ("newest page", "/history?limit=50", lambda d, c: d.list_messages(c, 50)),
        ("deep page (before = middle id)", f"/history?limit=50&before={mid}", lambda d, c: d.list_messages(c, 50, mid)),
        (f"one session, /history/<sid> ({p['typical_n']} msgs)", f"/history/{typ}",
         lambda d, c: (d.get_conversation(c, typ), d.conversation_messages(c, typ))),
        (f"largest session, /history/<sid> ({p['largest_n']} msgs)", f"/history/{big}",
         lambda d, c: (d.get_conversation(c, big), d.conversation_messages(c, big))),
        ("one session, /history?session=", f"/history?limit=50&session={typ}",
         lambda d, c: d.list_messages(c, 50, None, typ)),
        ("largest session, /history?session=", f"/history?limit=50&session={big}",
         lambda d, c: d.list_messages(c, 50, None, big)),
        ("model filter (qwen)", "/history?limit=50&model=qwen", lambda d, c: d.list_messages(c, 50, None, None, "qwen")),
        ("model filter, deep", f"/history?limit=50&model=qwen&before={mid}",
         lambda d, c: d.list_messages(c, 50, mid, None, "qwen")),
        ("search common word 'the'", "/history?limit=50&q=the", lambda d, c: d.list_messages(c, 50, q="the")),
        ("search common word 'что'", f"/history?limit=50&q={q('что')}", lambda d, c: d.list_messages(c, 50, q="что")),
        ("search two common words 'the model'", f"/history?limit=50&q={q('the model')}",
         lambda d, c: d.list_messages(c, 50, q="the model")),
        ("search common word, deep (before = middle id)", f"/history?limit=50&q=the&before={mid}",
         lambda d, c: d.list_messages(c, 50, mid, q="the")),
        ("search common word + model filter", "/history?limit=50&q=the&model=qwen",
         lambda d, c: d.list_messages(c, 50, None, None, "qwen", "the")),
        (f"search rare word '{RARE_EN}'", f"/history?limit=50&q={RARE_EN}",
         lambda d, c: d.list_messages(c, 50, q=RARE_EN)),
        (f"search rare word '{RARE_RU}'", f"/history?limit=50&q={q(RARE_RU)}",
         lambda d, c: d.list_messages(c, 50, q=RARE_RU)),
        ("search rare + common word", f"/history?limit=50&q={q(RARE_RU + ' что')}",
         lambda d, c: d.list_messages(c, 50, q=RARE_RU + " что")),
        ("search common word in one session", f"/history?limit=50&q=the&session={typ}",
         lambda d, c: d.list_messages(c, 50, None, typ, None, "the")),
        ("search common word in the largest session", f"/history?limit=50&q=the&session={big}",
         lambda d, c: d.list_messages(c, 50, None, big, None, "the")),
        (f"search common word in the most spread-out session ({p['widest_n']} msgs over "
         f"{p['widest_span']:,} ids)", f"/history?limit=50&q=the&session={p['widest']}",
         lambda d, c: d.list_messages(c, 50, None, p["widest"], None, "the")),
        ("search rare word in one session", f"/history?limit=50&q={q(RARE_RU)}&session={typ}",
         lambda d, c: d.list_messages(c, 50, None, typ, None, RARE_RU)),
        ("search two common words no message has ('the что')", f"/history?limit=50&q={q('the что')}",
         lambda d, c: d.list_messages(c, 50, q="the что")),
        ("web page's search: /history?limit=200&q=the", "/history?limit=200&q=the",
         lambda d, c: d.list_messages(c, 200, q="the")),
        ("web page's list: /history/sessions?limit=200", "/history/sessions?limit=200",
         lambda d, c: d.list_conversations(c, 200)),
        ("/history/sessions", "/history/sessions?limit=50", lambda d, c: d.list_conversations(c, 50)),
        ("/history/sessions, deep", f"/history/sessions?limit=50&before={p['mid_updated']}",
         lambda d, c: d.list_conversations(c, 50, p["mid_updated"])),
        ("/history/sessions?model=qwen", "/history/sessions?limit=50&model=qwen",
         lambda d, c: d.list_conversations(c, 50, None, "qwen")),
    ]


def internals_for(p):
    """What /gigachat and /qwen read per question: the session's earlier turns (exchange.past_turns)."""
    return [(f"exchange.past_turns, one session ({p['typical_n']} msgs)", p["typical"]),
            (f"exchange.past_turns, largest session ({p['largest_n']} msgs)", p["largest"])]


def explain(conn, dbm, fn):
    """EXPLAIN QUERY PLAN of every statement fn runs (captured with their values bound)."""
    stmts = []
    conn.set_trace_callback(stmts.append)
    try:
        fn(dbm, conn)
    finally:
        conn.set_trace_callback(None)
    out = []
    for s in stmts:
        if s.lstrip().startswith("--"):  # FTS5's own statements on its shadow tables
            continue
        plan = conn.execute("EXPLAIN QUERY PLAN " + s).fetchall()
        out.append((s, [r[3] for r in plan]))
    return out
