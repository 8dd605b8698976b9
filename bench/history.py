#!/usr/bin/env python
"""/history latency on a large history: 1,000,000 messages in ~20,000 conversations.

    .venv/bin/python bench/history.py [--quick] [--messages N] [--rebuild] [--backend sqlite|postgres|both]

The database is built once with the project's own schema (db.init_db) and cached under
.cache/bench/ (git-ignored); reruns reuse it. Build: sqlite3 executemany in large transactions,
then one FTS5 'rebuild' of the full-text index and an emptied index queue (fts_pending). The content is a
realistic mix: 2/3 GigaChat and 1/3 Qwen conversations of very uneven length (a few hundred
messages for the longest), Russian and English prose with a Zipf word distribution, code blocks in
Qwen answers, short questions and long answers. Two rare marker words (one Latin, one Cyrillic)
are planted in exactly 25 messages each; "the" and "что" are the common words.

Then the gateway is started on that file (gunicorn, the project's gunicorn.conf.py, 1 worker) and
each request below is timed over HTTP from one sequential keep-alive client (requests rotated so
drift hits all alike), alongside the same db.py call in-process (SQL only, no JSON or HTTP).
Goal: p95 <= 10 ms. Rows over the goal get their EXPLAIN QUERY PLAN printed (SQLite).

--backend postgres (or both, side by side in one run): a throwaway PostgreSQL (tests/pg_server.py's
initdb + pg_ctl) gets the same messages through db_move.py's mover (COPY, ids kept), then ANALYZE
(what autovacuum does on its own after a bulk load), and a second gateway runs with CHAT_DB=its URL.
"""
import argparse
import json
import math
import os
import random
import sqlite3
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (CACHE_DIR, Client, Servers, fmt, header, md_table, pct, start_fake,  # noqa: E402
                     start_gateway)
import db  # noqa: E402

GOAL_MS = 10.0
RARE_EN, RARE_RU, RARE_COUNT = "zyzzogeton", "квазиэкситон", 25
DB_FORMAT = 6  # bump when the generator changes, so cached files are rebuilt

EN_COMMON = ("the of and to a in is it you that he was for on are with as I his they be at one have this from "
             "or had by not word but what some we can out other were all there when up use your how said an "
             "each she which do their time if will way about many then them write would like so these her long "
             "make thing see him two has look more day could go come did number sound no most people my over "
             "know water than call first who may down side been now find any new work part take get place made "
             "live where after back little only round man year came show every good me give our under name very "
             "through just form sentence great think say help low line differ turn cause much mean before move "
             "right boy old too same tell does set three want air well also play small end put home read hand "
             "port large spell add even land here must big high such follow act why ask men change went light "
             "server model token stream request error cache memory python function return value list string "
             "file test data query index table thread process latency answer question context window").split()
RU_COMMON = ("и в не на я быть он с что а по это она этот к но они мы как из у который то за свой весь год от "
             "так о для ты же все тот мочь вы человек такой его сказать только или ещё бы себя один как уже до "
             "время если сам когда другой вот говорить наш мой знать стать при чтобы дело жизнь кто первый очень "
             "два день её новый рука даже во со раз где там под можно ну какой после их работа без самый потом "
             "надо хотеть ли слово идти большой должен место иметь ничто то сейчас тоже стоять друг дом теперь "
             "модель сервер запрос ответ ошибка память поток токен функция значение список строка файл тест "
             "данные индекс таблица задержка вопрос контекст окно код программа пример пользователь система").split()
CODE_LINES = ("def {a}({b}):", "    return {b} + {n}", "for {a} in range({n}):", "    {b}.append({a})",
              "if {a} is None:", "    raise ValueError('{a}')", "import {a}", "from {a} import {b}",
              "class {A}:", "    def __init__(self, {a}):", "        self.{a} = {a}", "{a} = {b}({n})",
              "print(f'{a}={{{b}}}')", "with open('{a}.txt') as f:", "    data = json.load(f)",
              "async def {a}({b}):", "    await {b}.{a}()", "# {a} {b}", "{a}: int = {n}", "try:",
              "except KeyError as e:", "    log.warning('{a}: %s', e)", "yield {a}", "assert {a} == {b}")


def _pseudo_words(rng, n, alphabet_syllables):
    out, seen = [], set()
    while len(out) < n:
        w = "".join(rng.choice(alphabet_syllables) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class Generator:
    def __init__(self, seed=42):
        self.rng = rng = random.Random(seed)
        en_syl = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["th", "ch", "sh", "er", "an", "on"]
        ru_syl = [c + v for c in "бвгдзклмнпрстфхцчшщ" for v in "аеиоуыяю"] + ["ст", "пр", "ов", "ен", "ть"]
        self.vocab = {}
        for lang, common, syl in (("en", EN_COMMON, en_syl), ("ru", RU_COMMON, ru_syl)):
            words = list(dict.fromkeys(common)) + [w for w in _pseudo_words(rng, 40000, syl)
                                                   if w not in (RARE_EN, RARE_RU)]
            # Zipf (s = 1.07): the top words appear in nearly every message, the tail in a handful.
            cum, total = [], 0.0
            for r in range(len(words)):
                total += 1.0 / (r + 1) ** 1.07
                cum.append(total)
            self.vocab[lang] = (words, cum)
        self.idents = _pseudo_words(rng, 3000, en_syl)

    def prose(self, lang, n_words):
        words, cum = self.vocab[lang]
        ws = self.rng.choices(words, cum_weights=cum, k=n_words)
        out, i = [], 0
        while i < len(ws):
            k = self.rng.randint(5, 18)
            s = " ".join(ws[i:i + k])
            out.append(s[:1].upper() + s[1:] + self.rng.choice(".....?!"))
            i += k
        return " ".join(out)

    def code(self, n_lines):
        r, idents = self.rng, self.idents
        lines = []
        for _ in range(n_lines):
            a, b = r.choice(idents), r.choice(idents)
            lines.append(r.choice(CODE_LINES).format(a=a, b=b, A=a.capitalize(), n=r.randint(0, 999)))
        return "```python\n" + "\n".join(lines) + "\n```"

    def words(self, median, sigma, lo, hi):
        return max(lo, min(hi, int(self.rng.lognormvariate(math.log(median), sigma))))

    def question(self, lang):
        return self.prose(lang, self.words(14, 0.8, 1, 400))

    def answer(self, lang, provider):
        r = self.rng
        text = self.prose(lang, self.words(70, 0.9, 3, 1500))
        if provider == "qwen" and r.random() < 0.6 or r.random() < 0.1:
            text += "\n\n" + self.code(self.words(12, 0.7, 2, 120)) + "\n\n" + self.prose(lang, self.words(20, 0.6, 3, 200))
        return text


PARAMS_BY_PROVIDER = {
    "gigachat": json.dumps({"temperature": 0.7, "top_p": 0.9, "max_tokens": 1024}),
    "qwen": json.dumps({"temperature": 0.4, "top_p": 0.9, "top_k": 60, "repetition_penalty": 1.1, "max_tokens": None}),
}
MESSAGE_INSERT = ("INSERT INTO messages (conversation_id, role, content, provider, model, system_prompt, params, "
                  "prompt_tokens, completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, "
                  "error, created_at, question_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _remove(path, suffixes=("", "-wal", "-shm")):
    for suffix in suffixes:
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def _conversations(rng, n_exchanges, n_convs):
    """(conversations, their questions' (time, conversation index) in time order) over the last year."""
    # Conversation sizes: lognormal, heavy-tailed (median ~30 messages, the longest ~1,500).
    weights = [rng.lognormvariate(0.0, 1.0) for _ in range(n_convs)]
    scale = (n_exchanges - n_convs) / sum(weights)
    sizes = [1 + int(w * scale) for w in weights]
    for c in rng.sample(range(n_convs), n_exchanges - sum(sizes)):  # the rounding remainder, spread
        sizes[c] += 1
    year = 365 * 86400.0
    t_end = time.time() - 86400
    t_begin = t_end - year
    convs, events = [], []
    for c, size in enumerate(sizes):
        provider = "gigachat" if rng.random() < 0.66 else "qwen"
        lang = "ru" if rng.random() < 0.6 else "en"
        start = t_begin + rng.random() * (year - 3600)
        span = min(t_end - start, rng.choice((600.0, 3600.0, 86400.0, 7 * 86400.0)))
        times = sorted(start + rng.random() * span for _ in range(size))
        sid = "%032x" % rng.getrandbits(128)
        model = (rng.choice(("GigaChat:2.0.28.2", "GigaChat-Pro:2.0.28.2", "GigaChat-2-Max:2.0.28.2"))
                 if provider == "gigachat" else "Qwen2.5-Coder-7B-Instruct")
        system = rng.choice(("", "", "You are a helpful assistant.", "Отвечай кратко и по делу."))
        convs.append([sid, provider, model, system, None, times[0], times[-1], lang])
        events += [(t, c) for t in times]
    events.sort()
    return convs, events


def _exchange(g, conv, t, k, q_extra, a_extra, history_tokens):
    """The question and answer rows of one exchange; the question is row k + 1 of a new table."""
    sid, provider, model, system, _, _, _, lang = conv
    params = PARAMS_BY_PROVIDER[provider]
    q, a = g.question(lang) + q_extra, g.answer(lang, provider) + a_extra
    pt = history_tokens + len(q) // 4 + 20
    ct = len(a) // 4
    latency = round(g.rng.uniform(300, 9000), 2)
    status, finish, err = "ok", "stop", None
    u = g.rng.random()
    if u < 0.01:
        status, finish, err, a = "error", None, "GigaChat failed (status 500): try again.", ""
    elif u < 0.02:
        status, finish, err = "cancelled", None, "client disconnected"
    return ((sid, "user", q, provider, None, system, params, None, None, None, None, None, "ok", None, t, None),
            (sid, "assistant", a, provider, model, system, params, pt, ct, pt // 2 if provider == "gigachat" else None,
             latency, finish, status, err, t + latency / 1000, k + 1))


def _insert_messages(conn, g, convs, events, rare_at, log, t0):
    """Every exchange, in time order, in transactions of 50,000 rows: (messages, titles, generate s, insert s)."""
    titles, batch, k, t_gen, t_ins = {}, [], 0, 0.0, 0.0
    history_tokens = [0] * len(convs)

    def flush():
        nonlocal t_ins
        tb = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(MESSAGE_INSERT, batch)
        conn.execute("COMMIT")
        t_ins += time.perf_counter() - tb
        batch.clear()

    for t, c in events:
        ta = time.perf_counter()
        q_extra, a_extra = (" " + rare_at[i] if i in rare_at else "" for i in (k, k + 1))
        question, answer = _exchange(g, convs[c], t, k, q_extra, a_extra, history_tokens[c])
        titles.setdefault(c, question[2][:200])
        history_tokens[c] = answer[7] + answer[8]  # this exchange's prompt + completion tokens
        batch += [question, answer]
        k += 2
        t_gen += time.perf_counter() - ta
        if len(batch) >= 50000:
            flush()
            if k % 200000 == 0:
                log(f"  {k:,} messages ({time.perf_counter() - t0:.0f} s)")
    if batch:
        flush()
    return k, titles, t_gen, t_ins


def build(path, n_messages, n_convs, seed=42, log=print):
    """Returns build stats."""
    t0 = time.perf_counter()
    _remove(path)
    tmp = path + ".building"
    _remove(tmp)
    db.init_db(tmp)
    g = Generator(seed)
    n_exchanges = n_messages // 2
    convs, events = _conversations(g.rng, n_exchanges, n_convs)
    # Plant the rare words in known messages (chosen among the message numbers).
    rare_at = {}
    for word in (RARE_EN, RARE_RU):
        for k in g.rng.sample(range(n_exchanges * 2), RARE_COUNT):
            rare_at[k] = word
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO conversations (id, provider, model, system_prompt, title, created_at, updated_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", [c[:7] for c in convs])
    conn.execute("COMMIT")
    k, titles, t_gen, t_ins = _insert_messages(conn, g, convs, events, rare_at, log, t0)
    conn.execute("BEGIN")
    conn.executemany("UPDATE conversations SET title = ? WHERE id = ?",
                     [(title, convs[c][0]) for c, title in titles.items()])
    conn.execute("COMMIT")
    tb = time.perf_counter()  # what db.index_pending would do in batches, in one go
    conn.execute("BEGIN")
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
    conn.execute("DELETE FROM fts_pending")
    conn.execute("COMMIT")
    t_fts = time.perf_counter() - tb
    meta = {"format": DB_FORMAT, "messages": k, "conversations": n_convs, "seed": seed,
            "doc_counts": _checked_counts(conn), "generate_s": round(t_gen, 1), "insert_s": round(t_ins, 1),
            "fts_s": round(t_fts, 1), "total_s": round(time.perf_counter() - t0, 1)}
    conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT OR REPLACE INTO bench_meta VALUES ('meta', ?)", (json.dumps(meta, ensure_ascii=False),))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.replace(tmp, path)
    _remove(tmp, ("-wal", "-shm"))
    meta["size_mb"] = round(os.path.getsize(path) / 2**20)
    return meta


def _checked_counts(conn):
    """Messages holding the words the report names; first, that every answer names its question."""
    unpaired = conn.execute("SELECT count(*) FROM messages a LEFT JOIN messages q ON q.id = a.question_id "
                            "WHERE a.role = 'assistant' AND (q.role IS NOT 'user' OR "
                            "q.conversation_id != a.conversation_id)").fetchone()[0]
    assert unpaired == 0, f"{unpaired} answers name no question of their conversation"  # past_turns reads pairs
    return {w: conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (f'"{w}"',)).fetchone()[0]
            for w in ("the", "что", RARE_EN, RARE_RU)}


def read_meta(path):
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return json.loads(conn.execute("SELECT value FROM bench_meta WHERE key = 'meta'").fetchone()[0])
        finally:
            conn.close()
    except (sqlite3.Error, TypeError):
        return None


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
    import db_move
    import pg_server
    server = pg_server.PostgresServer()
    try:
        url = server.new_database()
        t0 = time.perf_counter()
        moved = db_move.migrate_to_postgres(path, url)
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
    note = (f"PostgreSQL {version}: {moved['messages']:,} messages moved by db_move.py in "
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


def cached_db(a):
    """(path, meta, built now?) of the bench database, built once into CACHE_DIR."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    n_convs = a.conversations or max(1, a.messages // 50)
    path = os.path.join(CACHE_DIR, f"history-{a.messages}-{n_convs}.db")
    meta = None if a.rebuild else read_meta(path)
    if meta is not None and meta.get("format") == DB_FORMAT:
        return path, meta, False
    print(f"building {path} ({a.messages:,} messages, {n_convs:,} conversations; once, then cached) ...",
          file=sys.stderr, flush=True)
    return path, build(path, a.messages, n_convs, log=lambda s: print(s, file=sys.stderr, flush=True)), True


def ab_arm(other):
    """(name, repo, db module, exchange module) of another checkout."""
    other = os.path.abspath(other)
    db_b = load_module("db_ab", os.path.join(other, "db.py"))
    saved = sys.modules.get("db")
    sys.modules["db"] = db_b  # exchange.py of the other checkout imports `db`
    ex_path = os.path.join(other, "gateway", "exchange.py")  # older checkouts: exchange.py at the top
    ex_b = load_module("exchange_ab", ex_path if os.path.exists(ex_path) else os.path.join(other, "exchange.py"))
    sys.modules["db"] = saved
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
