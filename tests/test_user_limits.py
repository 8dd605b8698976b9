"""Per-user limits and key changes under gunicorn: the counts live in the database, so they hold across
4 workers and across two gateway hosts on one PostgreSQL; a 429 (with Retry-After) saves nothing; a
rotated or removed key is refused at once by every worker; a user's answer replayed from the journal stays theirs."""
import threading
import time

import requests

import db
from conftest import start_gateway
from helpers import stop_process
from users_helpers import add_user, ask, users_cli

DEAD = "http://127.0.0.1:9"


def wait_for_a_fresh_minute(need_s=40):
    """Limits count calendar minutes: start a burst early enough in one to end in it."""
    if time.time() % 60 > 60 - need_s:
        time.sleep(60 - time.time() % 60 + 0.2)


def burst(bases, key, n):
    """n questions at once, spread over the hosts; their responses."""
    out, lock = [], threading.Lock()

    def one(i):
        r = ask(bases[i % len(bases)], key, f"вопрос {i}", timeout=60)
        with lock:
            out.append(r)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_limits_hold_across_workers_and_hosts_on_one_postgres(postgres, fake_gigachat, tmp_path):
    url = postgres.new_database()
    hosts = [start_gateway(DEAD, fake_gigachat, tmp_path / f"h{n}", gunicorn_workers=workers, CHAT_DB=url,
                           GIGACHAT_MAX_CONCURRENCY="32") for n, workers in enumerate((4, 2))]
    bases = [h.base_url for h in hosts]
    alice = add_user(url, "alice", "--requests-per-minute", 5)
    bob = add_user(url, "bob", "--tokens-per-day", 20)
    try:
        wait_for_a_fresh_minute()
        replies = burst(bases, alice, 16)
        ok = [r for r in replies if r.status_code == 200]
        refused = [r for r in replies if r.status_code == 429]
        assert len(ok) == 5 and len(refused) == 11, [r.status_code for r in replies]
        for r in refused:
            assert r.json()["error"]["code"] == "user_limit_reached" and 1 <= int(r.headers["Retry-After"]) <= 60
        conn = db.open_connection(url)
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 10  # the refused saved nothing
        # tokens a day: the first answer uses them up; the next question, on the other host, is refused
        assert ask(bases[0], bob, "длинный вопрос " * 10).status_code == 200
        r = ask(bases[1], bob, "ещё")
        assert r.status_code == 429 and "tokens a day" in r.json()["error"]["message"]
        assert 60 < int(r.headers["Retry-After"]) <= 86400  # (until the next UTC day)
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 12
        conn.close()
        assert ask(bases[1], bob, "ещё", timeout=10).status_code == 429  # still
    finally:
        for h in hosts:
            stop_process(h)


def test_rotate_and_remove_take_effect_at_once_on_every_worker(fake_gigachat, tmp_path):
    target = str(tmp_path / "history.db")
    gw = start_gateway(DEAD, fake_gigachat, tmp_path, gunicorn_workers=4, CHAT_DB=target,
                       GIGACHAT_MAX_CONCURRENCY="32", CHAT_API_KEY="admin-key-0123456789abcdef0123")
    old = add_user(target, "alice")  # (CHAT_API_KEY: with no user left, the gateway would be keyless again)
    try:
        def statuses(key, n=12):  # new connections, spread over the workers, some at once
            return {r.status_code for r in (
                requests.get(gw.base_url + "/history/sessions", headers={"Authorization": f"Bearer {key}"},
                             timeout=10) for _ in range(n))}
        assert statuses(old) == {200}
        new = users_cli(target, "rotate", "alice").stdout.strip().splitlines()[-1]
        assert new != old and statuses(old) == {401} and statuses(new) == {200}
        users_cli(target, "remove", "alice")
        assert statuses(new) == {401}
        listing = users_cli(target, "list").stdout
        assert "alice" not in listing
    finally:
        stop_process(gw)


def test_sqlite_limit_under_four_workers(fake_gigachat, tmp_path):
    target = str(tmp_path / "history.db")
    gw = start_gateway(DEAD, fake_gigachat, tmp_path, gunicorn_workers=4, CHAT_DB=target,
                       GIGACHAT_MAX_CONCURRENCY="32")
    key = add_user(target, "alice", "--requests-per-minute", 3)
    try:
        wait_for_a_fresh_minute()
        codes = sorted(r.status_code for r in burst([gw.base_url], key, 10))
        assert codes == [200] * 3 + [429] * 7
        assert requests.get(gw.base_url + "/metrics", headers={"X-API-Key": key}, timeout=10).status_code == 403
        root = add_user(target, "root", "--admin")
        metrics = requests.get(gw.base_url + "/metrics", headers={"X-API-Key": root}, timeout=10).text
        assert 'chat_user_requests_today{user="alice"} 3.0' in metrics  # the sum over the 4 workers
    finally:
        stop_process(gw)


def test_a_users_answer_kept_in_the_journal_reaches_their_conversation(fake_gigachat, tmp_path):
    """An answer that ends while SQLite is locked goes to the journal (history/journal.py) and is replayed later:
    into its user's conversation (the journal line carries the owner, which add_message checks)."""
    import sqlite3

    from test_history_journal import journal_lines, wait_for
    path, journal_dir = str(tmp_path / "history.db"), str(tmp_path / "journal")
    gw = start_gateway(DEAD, fake_gigachat, tmp_path, CHAT_DB=path, CHAT_JOURNAL_DIR=journal_dir)
    key = add_user(path, "alice")
    box = {}
    asking = threading.Thread(target=lambda: box.update(r=ask(gw.base_url, key, "[[fault:slow=3]] в журнал")))
    try:
        asking.start()
        conn = db.open_connection(path)
        wait_for(lambda: conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1, 10, "no question saved")
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # past the 5 s busy timeout when the answer ends
        asking.join()
        assert box["r"].status_code == 200, box["r"].text
        kept = journal_lines(journal_dir)
        assert len(kept) == 1 and kept[0]["user_id"] > 0
        locker.execute("ROLLBACK")
        locker.close()
        wait_for(lambda: conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2, 15, "not replayed")
        assert {r[0] for r in conn.execute("SELECT user_id FROM messages")} == {kept[0]["user_id"]}
        conn.close()
        sid = box["r"].json()["session"]
        r = requests.get(f"{gw.base_url}/history/{sid}", headers={"X-API-Key": key}, timeout=10)
        assert [m["content"] for m in r.json()["messages"]] == ["[[fault:slow=3]] в журнал", "Эхо: в журнал"]
    finally:
        stop_process(gw)
