"""History on a real PostgreSQL (tests/pg_server.py): two gateway processes ("two hosts"), each
under gunicorn with two workers, writing to one database at once; the numbered schema files applied
once however many processes start together; a newer schema refused."""
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

import db
from conftest import start_gateway
from helpers import REPO_ROOT, errors_running_at_once, stop_process
from history import postgres as history_pg, users
from users_helpers import add_user


def test_two_hosts_with_two_workers_each_save_every_exchange_exactly_once(postgres, fake_gigachat, tmp_path):
    url = postgres.new_database()  # both hosts start on an empty database: they race to create the schema
    hosts = [start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path / str(n), gunicorn_workers=2,
                           CHAT_DB=url, GIGACHAT_MAX_CONCURRENCY="16") for n in range(2)]
    shared = f"shared-{uuid.uuid4().hex[:8]}"  # one session written from both hosts at once
    markers, errors = [], []

    def client(n):
        s = requests.Session()
        for i in range(6):
            marker = f"h{n}x{i}x{uuid.uuid4().hex[:6]}"
            markers.append(marker)
            host = hosts[(n + i) % 2].base_url
            params = {"q": f"{marker} вопрос", **({"session": shared} if i % 2 else {})}
            if i % 3 == 2:
                params["stream"] = 1
            r = s.get(host + "/gigachat", params=params, timeout=30)
            if r.status_code != 200 or (i % 3 == 2 and '"type":"done"' not in r.text):
                errors.append((marker, r.status_code, r.text[:200]))
    try:
        r = requests.post(hosts[0].base_url + "/v1/chat/completions", headers={"X-Session-ID": shared}, timeout=30,
                          json={"model": "gigachat", "messages": [{"role": "user", "content": "начало"}]})
        assert r.status_code == 200, r.text
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        conn = db.open_connection(url)
        rows = conn.execute("SELECT q.content, q.id, count(a.id) FROM messages q LEFT JOIN messages a "
                            "ON a.question_id = q.id WHERE q.role = 'user' GROUP BY q.id, q.content").fetchall()
        assert len(rows) == len(markers) + 1 == 49
        # each question saved once, and answered once
        assert sorted(content.split()[0] for content, _, _ in rows if content != "начало") == sorted(markers)
        assert all(answers == 1 for _, _, answers in rows)
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 98
        assert conn.execute("SELECT count(*) FROM messages WHERE conversation_id = ?", (shared,)).fetchone()[0] == 50
        pairs = db.answered_pairs(conn, shared)
        assert len(pairs) == 25 and all(p["answer"] and p["status"] == "ok" for p in pairs)
        conn.close()
        # either host serves the whole history, searched with tsvector (Cyrillic)
        for host in hosts:
            found = requests.get(host.base_url + "/history", params={"q": "вопрос", "limit": 200}, timeout=10).json()
            assert len([m for m in found["messages"] if m["role"] == "user"]) == 48
    finally:
        for host in hosts:
            stop_process(host)


def test_processes_starting_together_apply_the_schema_once(postgres):
    url = postgres.new_database()
    errors = errors_running_at_once(lambda: history_pg.init_db(url))
    conn = db.open_connection(url)
    assert not errors, errors
    assert [tuple(r) for r in conn.execute("SELECT version FROM schema_version")] == [(history_pg.SCHEMA_VERSION,)]
    conn.execute("UPDATE schema_version SET version = version + 1")
    conn.close()
    with pytest.raises(RuntimeError, match="newer version"):
        history_pg.init_db(url)


def test_an_sqlite_history_moves_to_postgres_with_one_command(postgres, tmp_path):
    path, url = str(tmp_path / "old.db"), postgres.new_database()
    db.init_db(path)
    src = db.connect(path)
    for n in range(3):
        q = db.add_message(src, f"s{n}", "user", f"вопрос номер {n}", "qwen", title=f"t{n}")
        db.add_message(src, f"s{n}", "assistant", f"ответ {n}", "qwen", params={"temperature": 0.4}, question_id=q)
    db.add_message(src, "s0", "user", "без ответа", "qwen")
    db.delete_conversation(src, "s1")  # ids with a gap
    src.close()
    key = add_user(path, "анна")  # a user, their conversation and their limits' counters go along
    src = db.connect(path)
    anna = src.execute("SELECT id FROM users").fetchone()[0]
    db.add_message(src, "s9", "user", "Анна спрашивает", "qwen", title="t9", user_id=anna)
    src.execute("INSERT INTO user_usage VALUES (?, 'tokens_day', 0, 7)", (anna,))
    src.close()
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "db.py"), "migrate-to-postgres", path, url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 conversations, 6 messages, 2 pairs, 1 users" in out.stdout
    conn, src = db.open_connection(url), db.connect(path)
    for table in ("users", "user_usage", "conversations"):
        assert [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")] == \
            [tuple(r) for r in src.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
    assert [r["id"] for r in db.list_messages(conn, user=anna)] == [r["id"] for r in db.list_messages(src, user=anna)]
    assert users.by_key(conn, key).id == anna
    assert [dict(r) for r in db.iter_messages(conn)] == [dict(r) for r in db.iter_messages(src)]
    assert [dict(r) for r in db.list_conversations(conn)] == [dict(r) for r in db.list_conversations(src)]
    assert [r["content"] for r in db.list_messages(conn, q="вопрос")] == ["вопрос номер 2", "вопрос номер 0"]
    new = db.add_message(conn, "s0", "user", "после переезда", "qwen")  # ids go on after the moved ones
    assert new > max(r["id"] for r in db.iter_messages(src))
    add_user(url, "борис")  # and so do users' ids
    again = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "db.py"), "migrate-to-postgres", path, url],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "not empty" in again.stderr  # never twice into one database
    conn.close()
    src.close()


def test_a_postgres_that_goes_away_is_a_503_and_its_return_is_picked_up(fake_gigachat, tmp_path):
    import pg_server
    server = pg_server.PostgresServer()  # its own server: this test stops it
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, CHAT_DB=server.new_database())
    try:
        assert requests.get(gw.base_url + "/gigachat", params={"q": "до"}, timeout=30).status_code == 200
        server.stop(remove=False)
        r = requests.get(gw.base_url + "/history", timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
        assert "postgres@" not in r.text  # the URL (which may hold a password) is not echoed
        server.start()
        deadline, status = time.monotonic() + 10, None
        while status != 200 and time.monotonic() < deadline:  # the pool drops broken connections
            status = requests.get(gw.base_url + "/gigachat", params={"q": "после"}, timeout=30).status_code
        assert status == 200
        assert [m["content"] for m in requests.get(gw.base_url + "/history", timeout=10).json()["messages"]
                if m["role"] == "user"] == ["после", "до"]
    finally:
        stop_process(gw)
        server.stop()
