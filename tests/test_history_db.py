"""db.py on real SQLite files: the full-text index filled off the request path (schema version 2),
deletes that never corrupt it, answers that name their questions (version 3), migration of older
files, private file modes and a bounded WAL. The backend-neutral tests (any_conn) run on a real
PostgreSQL too."""
import os
import sqlite3
import stat
import threading
import time

import pytest
import requests

import db
from conftest import start_gateway
from helpers import TESTS_DIR, errors_running_at_once, stop_process
from history import postgres as history_pg, sqlite as history_sqlite

V1_SCHEMA = os.path.join(TESTS_DIR, "schema_v1.sql")


def fts_ids(conn, word):
    return sorted(r[0] for r in conn.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?",
                                             (db.fts_query(word),)))


def fts_ok(conn):
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")  # raises if corrupt
    return True


@pytest.fixture
def conn(tmp_path):
    path = str(tmp_path / "h.db")
    db.init_db(path)
    c = db.connect(path)
    yield c
    c.close()


@pytest.fixture(params=["sqlite", "postgres"])
def any_conn(request, tmp_path):
    """A connection to a new history on either backend (PostgreSQL: a new database on the test server)."""
    target = str(tmp_path / "h.db") if request.param == "sqlite" else request.getfixturevalue("postgres").new_database()
    db.init_db(target) if request.param == "sqlite" else history_pg.init_db(target)
    c = db.open_connection(target)
    yield c
    c.close()


def save(conn, sid, text, title=None):
    return db.add_message(conn, sid, "user", text, "qwen", title=title)


def test_saving_queues_and_searching_indexes(conn):
    a = save(conn, "s1", "первое слово alpha", title="t")
    b = save(conn, "s1", "второе слово beta")
    assert fts_ids(conn, "слово") == []  # saved, queued, not indexed yet
    assert [r["id"] for r in db.list_messages(conn, q="слово")] == [b, a]  # a search indexes first
    assert conn.execute("SELECT count(*) FROM fts_pending").fetchone()[0] == 0
    assert fts_ids(conn, "слово") == [a, b] and fts_ok(conn)


def test_deletes_and_edits_keep_the_index_exact_whether_indexed_or_queued(conn):
    old = save(conn, "old", "indexed text gamma", title="t")
    db.index_pending(conn)
    new = save(conn, "new", "queued text gamma", title="t")
    keep = save(conn, "keep", "kept text gamma", title="t")
    assert db.delete_conversation(conn, "old") and db.delete_conversation(conn, "new")  # one of each kind
    assert fts_ok(conn) and db.index_pending(conn) == 1
    assert fts_ids(conn, "gamma") == [keep] and fts_ok(conn)
    # after the newest rows were deleted: a new id all the same (AUTOINCREMENT, version 4; a plain INTEGER
    # PRIMARY KEY would give `keep`'s id again)
    db.delete_conversation(conn, "keep")
    again = save(conn, "again", "new id delta", title="t")
    assert again > keep and fts_ids(conn, "gamma") == []
    conn.execute("UPDATE messages SET content = 'edited epsilon' WHERE id = ?", (again,))  # queued, edited
    assert db.index_pending(conn) == 1 and fts_ids(conn, "delta") == [] and fts_ids(conn, "epsilon") == [again]
    conn.execute("UPDATE messages SET content = 'edited zeta' WHERE id = ?", (again,))  # indexed, edited
    db.index_pending(conn)
    assert fts_ids(conn, "epsilon") == [] and fts_ids(conn, "zeta") == [again] and fts_ok(conn)
    assert old < new < keep


def test_indexing_goes_in_batches_and_resumes(conn):
    ids = [save(conn, "s", f"word{i} common", title="t") for i in range(25)]
    assert db.index_pending(conn, batch=10) == 25
    assert fts_ids(conn, "common") == ids and fts_ok(conn)


def test_an_index_batch_holds_at_most_its_bytes_and_stops_when_asked(conn):
    """A transaction's index pages all go to the WAL at commit: a batch is bounded by text as well as count,
    and the maintenance thread stops indexing when it cannot empty the WAL between batches."""
    ids = [save(conn, "s", f"big{i} " + "x" * 100_000, title="t") for i in range(6)]  # ~100 KB each
    calls = []

    def between():
        calls.append(conn.execute("SELECT count(*) FROM fts_pending").fetchone()[0])
        return len(calls) < 2
    assert db.index_pending(conn, max_bytes=250_000, between=between) == 4  # 2 + 2, then told to stop
    assert calls == [4, 2]
    assert db.index_pending(conn, max_bytes=1) == 2  # one message a batch when one is over the bound
    assert fts_ids(conn, "big5") == [ids[5]] and fts_ok(conn)


def make_v1(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    with open(V1_SCHEMA, encoding="utf-8") as f:
        c.executescript(f.read())
    c.execute("PRAGMA user_version = 1")
    return c


def test_version_1_file_is_migrated_and_keeps_its_index(tmp_path):
    path = str(tmp_path / "v1.db")
    c = make_v1(path)
    c.execute("INSERT INTO conversations VALUES ('v1', 'qwen', NULL, NULL, 't', 0, 0)")
    c.execute("INSERT INTO messages (conversation_id, role, content, provider, created_at) "
              "VALUES ('v1', 'user', 'старое сообщение', 'qwen', 0)")  # indexed by the version 1 trigger
    c.close()
    db.init_db(path)
    db.init_db(path)  # a second run (another worker) changes nothing
    conn = db.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION == 6
    new = save(conn, "v1", "новое сообщение")
    assert [r["content"] for r in db.list_messages(conn, q="сообщение")] == ["новое сообщение", "старое сообщение"]
    db.delete_conversation(conn, "v1")
    assert fts_ids(conn, "сообщение") == [] and fts_ok(conn) and new


def test_newer_file_is_refused(tmp_path):
    path = str(tmp_path / "future.db")
    db.init_db(path)
    sqlite3.connect(path).execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}").connection.close()
    with pytest.raises(RuntimeError, match="newer version"):
        db.init_db(path)


def test_the_server_indexes_in_the_background(fake_gigachat, tmp_path):
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path)
    try:
        r = requests.get(gw.base_url + "/gigachat", params={"q": "фоновый индекс"}, timeout=30)
        assert r.status_code == 200
        conn = db.connect(str(tmp_path / "history.db"))
        deadline = time.monotonic() + 10 * db.MAINTENANCE_INTERVAL_S
        while conn.execute("SELECT count(*) FROM fts_pending").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(fts_ids(conn, "фоновый")) == 2 and fts_ok(conn)  # the question and its echo; no search ran
        conn.close()
    finally:
        stop_process(gw)


def shape(path):
    """The schema as SQLite sees it: columns, foreign keys, indexes and trigger bodies."""
    c = sqlite3.connect(path)
    try:
        out = {}
        for (name, kind, sql) in c.execute("SELECT name, type, sql FROM sqlite_master WHERE name NOT LIKE "
                                           "'sqlite_%' AND name NOT LIKE 'messages_fts_%'"):
            if kind == "table":
                out[name] = ([tuple(r) for r in c.execute(f"PRAGMA table_info({name})")],
                             [tuple(r) for r in c.execute(f"PRAGMA foreign_key_list({name})")],
                             "AUTOINCREMENT" in sql.upper())
            elif kind == "index":
                out[name] = [tuple(r) for r in c.execute(f"PRAGMA index_info({name})")] + \
                    [r[2] for r in c.execute("PRAGMA index_list(messages)") if r[1] == name]
            else:
                out[name] = " ".join(sql.replace("IF NOT EXISTS ", "").split())
        return out
    finally:
        c.close()


def test_a_new_file_and_a_migrated_one_have_the_same_schema(tmp_path):
    new, old = str(tmp_path / "new.db"), str(tmp_path / "old.db")
    db.init_db(new)
    make_v1(old).close()
    db.init_db(old)
    assert shape(new) == shape(old)
    assert "question_id" in [c[1] for c in shape(new)["messages"][0]]
    assert shape(new)["messages"][2]  # ids never given twice (version 4)


def test_version_2_answers_are_paired_with_the_question_just_before_them(tmp_path):
    path = str(tmp_path / "v2.db")
    make_v1(path).close()
    history_sqlite.init_db(path, upto=2)  # a file as version 2 left it
    c = sqlite3.connect(path, isolation_level=None)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 2
    c.execute("INSERT INTO conversations VALUES ('s', 'qwen', NULL, NULL, 't', 0, 0)")
    rows = [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("user", "q3"), ("assistant", "a3"),
            ("assistant", "stray")]
    ids = [c.execute("INSERT INTO messages (conversation_id, role, content, provider, created_at) "
                     "VALUES ('s', ?, ?, 'qwen', 0)", r).lastrowid for r in rows]
    c.close()
    db.init_db(path)
    conn = db.connect(path)
    got = dict(conn.execute("SELECT content, question_id FROM messages WHERE role = 'assistant'").fetchall())
    assert got == {"a1": ids[0], "a3": ids[3], "stray": None}
    assert [(r["question"], r["answer"]) for r in db.answered_pairs(conn, "s")] == [("q1", "a1"), ("q3", "a3")]
    db.delete_conversation(conn, "s")
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0 and fts_ok(conn)


def test_workers_migrating_at_once_migrate_once(tmp_path):
    path = str(tmp_path / "race.db")
    make_v1(path).close()
    errors = errors_running_at_once(lambda: db.init_db(path))
    assert not errors and sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION


def test_answers_name_their_question_and_one_answer_a_question(any_conn):
    conn = any_conn
    q = save(conn, "p", "вопрос", title="t")
    a = db.add_message(conn, "p", "assistant", "ответ", "qwen", question_id=q)
    assert conn.execute("SELECT question_id FROM messages WHERE id = ?", (a,)).fetchone()[0] == q
    with pytest.raises(db.INTEGRITY_ERRORS):
        db.add_message(conn, "p", "assistant", "второй ответ", "qwen", question_id=q)
    db.delete_conversation(conn, "p")
    with pytest.raises(db.ConversationGone):  # an answer that arrives after its conversation was deleted
        db.add_message(conn, "p", "assistant", "поздно", "qwen", question_id=q)
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_a_late_answer_whose_question_id_was_reused_is_conversation_gone(any_conn):
    """SQLite reuses the highest ids once their rows are deleted: a question of a deleted conversation
    may share its id with a newer, answered question. The late answer is ConversationGone (found by
    bench/soak.py as a 500: the UNIQUE question_id failed before the foreign key was checked)."""
    conn = any_conn
    q = save(conn, "gone", "старый вопрос", title="t")
    db.delete_conversation(conn, "gone")
    q2 = save(conn, "new", "новый вопрос", title="t")
    db.add_message(conn, "new", "assistant", "ответ", "qwen", question_id=q2)
    with pytest.raises(db.ConversationGone):
        db.add_message(conn, "gone", "assistant", "поздно", "qwen", question_id=q)
    assert [r["content"] for r in db.conversation_messages(conn, "new")] == ["новый вопрос", "ответ"]


def test_a_late_answer_in_a_session_recreated_under_its_id_names_no_new_question(any_conn):
    """A client may recreate a deleted session under the same X-Session-ID while an answer of the deleted
    one is still in flight: the new question gets a new id (never the deleted one's), so the late answer
    finds its question gone, and the new question keeps its own answer."""
    conn = any_conn
    q = save(conn, "s", "старый вопрос", title="t")
    db.delete_conversation(conn, "s")
    q2 = save(conn, "s", "новый вопрос", title="t")
    assert q2 != q
    with pytest.raises(db.ConversationGone):
        db.add_message(conn, "s", "assistant", "поздно", "qwen", question_id=q)
    db.add_message(conn, "s", "assistant", "ответ", "qwen", question_id=q2)
    assert [(p["question"], p["answer"]) for p in db.answered_pairs(conn, "s")] == [("новый вопрос", "ответ")]


def test_search_matches_every_word_in_any_script_and_pages(any_conn):
    conn = any_conn
    a = save(conn, "s1", "Привет, МИР: first", title="t")
    b = save(conn, "s2", "привет мир second", title="t")
    db.add_message(conn, "s3", "user", "привет only", "gigachat", title="t")
    assert [r["id"] for r in db.list_messages(conn, q="мир привет")] == [b, a]  # all words, any case, newest first
    assert [r["id"] for r in db.list_messages(conn, q="мир привет", before=b)] == [a]
    assert [r["id"] for r in db.list_messages(conn, q="привет", session="s1")] == [a]
    assert [r["session"] for r in map(db.message_dict, db.list_messages(conn, q="привет", provider="gigachat"))] \
        == ["s3"]
    for syntax in ('"', "мир AND", "(мир", "мир:*", "!мир", "мир | x", "NEAR(мир)", "мир\x00"):
        db.list_messages(conn, q=syntax)  # no search syntax leaks through: never an error
    assert db.list_messages(conn, q="мир | nothing") == []
    db.delete_conversation(conn, "s1")
    assert [r["id"] for r in db.list_messages(conn, q="мир")] == [b]
    assert [r["title"] for r in db.list_conversations(conn)] == ["t", "t"]


def bulk_history(conn, n):
    """n messages in two conversations (qwen, gigachat), oldest first, words placed by position: 'common' in
    every 2nd, 'alpha' and 'beta' in every 3rd (never together), 'sparse' in every 60th, 'редкое' in three
    old ones, 'сосед' in 101 old ones in a row, 'mixed' in two old ones and the newest.
    Returns [(id, words, provider)], oldest first."""
    def words(i):
        return (["common"] * (i % 2 == 0) + ["alpha"] * (i % 3 == 0) + ["beta"] * (i % 3 == 1) + ["sparse"] * (i % 60 == 0)
                + ["редкое"] * (i in (5, 17, 300)) + ["сосед"] * (100 <= i <= 200) + ["mixed"] * (i in (10, 20, n - 1))
                + [f"w{i}"])
    rows = [("c" + "qg"[i % 2], "user", " ".join(words(i)), ("qwen", "gigachat")[i % 2], float(i)) for i in range(n)]
    convs = [("cq", "qwen", 0.0, 0.0), ("cg", "gigachat", 0.0, 0.0)]
    sql_c = "INSERT INTO conversations (id, provider, created_at, updated_at) VALUES (?, ?, ?, ?)"
    sql_m = "INSERT INTO messages (conversation_id, role, content, provider, created_at) VALUES (?, ?, ?, ?, ?)"
    if conn.backend == "postgres":
        with conn.raw.transaction(), conn.raw.cursor() as cur:
            cur.executemany(sql_c.replace("?", "%s"), convs)
            cur.executemany(sql_m.replace("?", "%s"), rows)
    else:
        conn.executemany(sql_c, convs)
        conn.executemany(sql_m, rows)
        conn.commit()
    ids = [r[0] for r in conn.execute("SELECT id FROM messages ORDER BY id")]
    return [(id_, set(words(i)), rows[i][3]) for i, id_ in enumerate(ids)]


def test_search_pages_are_the_newest_matches_however_rare_or_old(any_conn):
    """PostgreSQL tests the newest rows first, then walks on or asks the GIN index for older ones
    (history/pg_search.py): every kind of word and filter gives exactly the newest matches, in order, on
    both backends. 60,000 rows: enough for each of the three ways ('common', 'sparse', 'редкое')."""
    conn = any_conn
    n = 60_000
    msgs = bulk_history(conn, n)
    mid, old = msgs[n // 2][0], msgs[150][0]
    for q in ("common", "sparse", "редкое", "alpha beta", "сосед", "mixed", "Mixed W10", "sparse alpha", "nothing"):
        matching = [(i, prov) for i, words, prov in reversed(msgs) if set(q.lower().split()) <= words]
        for before in (None, mid, old):
            for provider in (None, "qwen"):
                for limit in (50, 2):
                    want = [i for i, prov in matching if (before is None or i < before)
                            and provider in (None, prov)][:limit]
                    got = [r["id"] for r in db.list_messages(conn, limit, before, None, provider, q)]
                    assert got == want, (q, before, provider, limit)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_history_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = str(tmp_path / "private.db")
        db.init_db(path)
        conn = db.connect(path)
        save(conn, "m", "secret", title="t")
        assert [mode(path + suffix) for suffix in ("", "-wal", "-shm")] == [0o600] * 3
        conn.close()
    finally:
        os.umask(old)


def test_an_existing_world_readable_history_is_made_private_at_open(tmp_path):
    path = str(tmp_path / "old.db")
    conn = db.connect(path)  # a file made by an older version, or copied in with a umask of 022
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    for suffix in ("", "-wal", "-shm"):
        os.chmod(path + suffix, 0o644)
    db.init_db(path)  # (what the server does when it starts)
    assert [mode(path + suffix) for suffix in ("", "-wal", "-shm")] == [0o600] * 3
    conn.close()  # (the last connection removes the -wal and -shm)
    assert not os.path.exists(path + "-wal")
    os.chmod(path, 0o644)
    db.init_db(path)
    conn = db.connect(path)
    save(conn, "m", "secret", title="t")  # the -wal and -shm SQLite creates now
    assert [mode(path + suffix) for suffix in ("", "-wal", "-shm")] == [0o600] * 3
    conn.close()


def test_the_wal_stays_under_32_mb_while_6_writers_write_for_15_s(fake_gigachat, tmp_path):
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, GIGACHAT_MAX_CONCURRENCY="8")
    wal, peak, done, saved = str(tmp_path / "history.db-wal"), [0], threading.Event(), []

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], os.path.getsize(wal) if os.path.exists(wal) else 0)
            time.sleep(0.01)

    def writer(n):
        s, i = requests.Session(), 0
        while not done.is_set():
            words = " ".join(f"слово{n}x{i}x{k}" for k in range(2000))  # ~30 KB, many distinct terms
            assert s.post(gw.base_url + "/gigachat", json={"q": words}, timeout=60).status_code == 200
            saved.append(1)
            i += 1
            if n % 2:  # readers too: a reader holding an old snapshot keeps the WAL from starting over
                assert s.get(gw.base_url + "/history", params={"limit": 5}, timeout=60).status_code == 200
    threads = [threading.Thread(target=watch)] + [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    try:
        for t in threads:
            t.start()
        time.sleep(15)
    finally:
        done.set()
        for t in threads:
            t.join()
        stop_process(gw)
    assert len(saved) > 100, "too few writes to prove anything"
    assert peak[0] <= 32 << 20, (peak[0] >> 20, len(saved))


def test_the_wal_stays_bounded_after_a_burst_and_files_are_private(fake_gigachat, tmp_path):
    old = os.umask(0o022)
    try:
        gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, gunicorn_workers=1,
                           GIGACHAT_MAX_CONCURRENCY="8")
    finally:
        os.umask(old)
    path = str(tmp_path / "history.db")
    wal, peak, done = path + "-wal", [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], os.path.getsize(wal) if os.path.exists(wal) else 0)
            time.sleep(0.01)

    def burst(n):
        s = requests.Session()
        for i in range(10):
            words = " ".join(f"слово{n}x{i}x{k}" for k in range(6000))  # ~100 KB, many distinct terms
            assert s.post(gw.base_url + "/gigachat", json={"q": words}, timeout=60).status_code == 200
    try:
        watcher = threading.Thread(target=watch)
        watcher.start()
        writers = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        deadline = time.monotonic() + 5 * db.MAINTENANCE_INTERVAL_S
        while os.path.getsize(wal) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        done.set()
        watcher.join()
        assert peak[0] > db.WAL_SIZE_LIMIT, "the burst never grew the WAL: the test proves nothing"
        assert os.path.getsize(wal) == 0, (os.path.getsize(wal), peak[0])  # emptied once idle
        assert [mode(path + suffix) for suffix in ("", "-wal", "-shm")] == [0o600] * 3
    finally:
        done.set()
        stop_process(gw)
