"""No answer lost when the history database is briefly unavailable (history/journal.py): answers that end
while another process holds SQLite's write lock for 12 s, or while PostgreSQL is stopped for 30 s,
streamed and not, reach the history once it is back, each exactly once, in the order they ended; a
journal left by a killed gateway is replayed at the next start, lines already written included."""
import glob
import json
import os
import signal
import sqlite3
import threading
import time

import requests

import db
from conftest import start_gateway
from helpers import live_processes, stop_process
from history.journal import REJECTED, Journal

SLOW = 3  # seconds the fake GigaChat waits before answering: the questions are saved, the answers not yet


def ask_all(base, n, prefix):
    """n questions at once (every other one streamed), each answered SLOW s later; returns the threads
    and a dict that fills with (status, body) per question."""
    results = {}

    def one(i):
        params = {"q": f"[[fault:slow={SLOW}]] {prefix} вопрос {i}"}
        if i % 2:
            params["stream"] = 1
        r = requests.get(base + "/gigachat", params=params, timeout=60)
        results[i] = (r.status_code, r.text)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def count(target, sql):
    conn = db.open_connection(target)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def journal_lines(journal_dir):
    return [json.loads(line) for path in sorted(glob.glob(os.path.join(journal_dir, "*", "*.jsonl")))
            for line in open(path, encoding="utf-8")]


def check_every_answer_once_in_order(target, n, prefix, ended_order):
    conn = db.open_connection(target)
    try:
        questions = conn.execute("SELECT id, content FROM messages WHERE role = 'user' AND content LIKE ?",
                                 (f"%{prefix}%",)).fetchall()
        assert len(questions) == n
        answers = conn.execute("SELECT question_id, content, status FROM messages WHERE role = 'assistant' "
                               "ORDER BY id").fetchall()
    finally:
        conn.close()
    by_question = {q["id"]: q["content"] for q in questions}
    assert sorted(a["question_id"] for a in answers) == sorted(by_question)  # each exactly once
    for a in answers:
        assert a["status"] == "ok" and a["content"] == "Эхо: " + by_question[a["question_id"]].split("]] ")[1]
    if ended_order is not None:
        assert [a["question_id"] for a in answers] == ended_order  # in the order they ended


def check_answered(results, n):
    assert sorted(results) == list(range(n))
    for i, (status, body) in results.items():
        assert status == 200, body
        if i % 2:  # the stream ends with its done event (message_id null: the row is not written yet)
            assert '"type":"done"' in body and '"type":"error"' not in body, body
        else:
            assert json.loads(body)["answer"].startswith("Эхо: ")


def test_answers_that_end_while_sqlite_is_locked_for_12_s_reach_the_history_once_it_is_free(fake_gigachat,
                                                                                               tmp_path):
    journal_dir = str(tmp_path / "journal")
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, CHAT_JOURNAL_DIR=journal_dir,
                       GIGACHAT_MAX_CONCURRENCY="8")  # (the answers end together)
    path = str(tmp_path / "history.db")
    try:
        threads, results = ask_all(gw.base_url, 4, "lock")
        wait_for(lambda: count(path, "SELECT count(*) FROM messages WHERE role = 'user'") == 4, 10,
                 "the questions were not saved")
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock while the answers end
        locked_at = time.monotonic()
        for t in threads:
            t.join()
        assert time.monotonic() - locked_at < 12, "the answers waited for the lock to go"
        check_answered(results, 4)
        r = requests.get(gw.base_url + "/gigachat", params={"q": "во время блокировки"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
        kept = journal_lines(journal_dir)  # what the operator finds: one line per answer, fsynced
        assert len(kept) == 4 and all(k["role"] == "assistant" for k in kept)
        time.sleep(max(0.0, 12 - (time.monotonic() - locked_at)))
        locker.execute("ROLLBACK")
        locker.close()
        wait_for(lambda: count(path, "SELECT count(*) FROM messages WHERE role = 'assistant'") == 4, 15,
                 "the journal was not replayed")
        check_every_answer_once_in_order(path, 4, "lock", [k["question_id"] for k in kept])
        wait_for(lambda: journal_lines(journal_dir) == [], 5, "the journal was not emptied")
        time.sleep(2)  # replayed once: nothing more comes
        assert count(path, "SELECT count(*) FROM messages WHERE role = 'assistant'") == 4
    finally:
        stop_process(gw)


def test_a_journal_left_by_a_killed_gateway_is_replayed_at_start_exactly_once(fake_gigachat, tmp_path):
    journal_dir = str(tmp_path / "journal")
    path = str(tmp_path / "history.db")
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, gunicorn_workers=2,
                       CHAT_JOURNAL_DIR=journal_dir, GIGACHAT_MAX_CONCURRENCY="8")
    try:
        threads, results = ask_all(gw.base_url, 4, "killed")
        wait_for(lambda: count(path, "SELECT count(*) FROM messages WHERE role = 'user'") == 4, 10,
                 "the questions were not saved")
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        for t in threads:
            t.join()
        check_answered(results, 4)
        workers = [pid for pid, ppid, _ in live_processes() if ppid == gw.pid]
        for pid in [gw.pid] + workers:  # the whole gunicorn: no one is left to replay
            os.kill(pid, signal.SIGKILL)
        gw.wait()
    finally:
        stop_process(gw)
    kept = journal_lines(journal_dir)
    assert len(kept) == 4
    # A replay cut short after writing two answers leaves their lines behind: a copy of them must not
    # give a question a second answer.
    sub = glob.glob(os.path.join(journal_dir, "*"))[0]
    with open(os.path.join(sub, "other-1-cutshort.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(k, ensure_ascii=False) + "\n" for k in kept[:2])
    os.utime(os.path.join(sub, "other-1-cutshort.jsonl"), (0, 0))  # the oldest file: replayed first
    locker.execute("ROLLBACK")
    locker.close()
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, gunicorn_workers=2,
                       CHAT_JOURNAL_DIR=journal_dir, GIGACHAT_MAX_CONCURRENCY="8")
    try:
        wait_for(lambda: count(path, "SELECT count(*) FROM messages WHERE role = 'assistant'") >= 4, 15,
                 "the journal was not replayed at start")
        time.sleep(2)
        check_every_answer_once_in_order(path, 4, "killed", None)  # (two workers' files: no order between them)
        assert glob.glob(os.path.join(sub, "*.jsonl")) == []  # taken over, replayed, deleted
    finally:
        stop_process(gw)


def test_answers_that_end_while_postgres_is_down_for_30_s_reach_it_once_it_is_back(fake_gigachat, tmp_path):
    import pg_server
    server = pg_server.PostgresServer()  # its own server: this test stops it
    url = server.new_database()
    journal_dir = str(tmp_path / "journal")
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, CHAT_DB=url, CHAT_JOURNAL_DIR=journal_dir,
                       GIGACHAT_MAX_CONCURRENCY="8")
    try:
        threads, results = ask_all(gw.base_url, 6, "pg")
        wait_for(lambda: count(url, "SELECT count(*) FROM messages WHERE role = 'user'") == 6, 10,
                 "the questions were not saved")
        server.stop(remove=False)
        stopped_at = time.monotonic()
        for t in threads:
            t.join()
        check_answered(results, 6)
        r = requests.get(gw.base_url + "/gigachat", params={"q": "без базы"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
        kept = journal_lines(journal_dir)
        assert len(kept) == 6
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped_at)))
        server.start()
        wait_for(lambda: count(url, "SELECT count(*) FROM messages WHERE role = 'assistant'") == 6, 20,
                 "the journal was not replayed")
        check_every_answer_once_in_order(url, 6, "pg", [k["question_id"] for k in kept])
        wait_for(lambda: journal_lines(journal_dir) == [], 5, "the journal was not emptied")
        r = requests.get(gw.base_url + "/gigachat", params={"q": "после"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        stop_process(gw)
        server.stop()


def test_replay_skips_what_is_written_or_gone_and_sets_aside_what_the_history_refuses(tmp_path):
    path = str(tmp_path / "h.db")
    db.init_db(path)
    conn = db.connect(path)
    q1 = db.add_message(conn, "s1", "user", "один", "gigachat", title="один")
    q2 = db.add_message(conn, "s2", "user", "два", "gigachat", title="два")
    q3 = db.add_message(conn, "s3", "user", "три", "gigachat", title="три")
    journal = Journal(str(tmp_path / "j"), path)

    def answer(sid, qid, text, **extra):
        return dict({"conv_id": sid, "role": "assistant", "content": text, "provider": "gigachat",
                     "question_id": qid, "created_at": 1000.0 + qid}, **extra)
    journal.append(answer("s1", q1, "ответ 1"))
    journal.append(answer("s1", q1, "ответ 1"))  # the same answer twice: written once
    journal.append(answer("s2", q2, "ответ 2", colour="red"))  # refused (an unknown field): set aside
    journal.append(answer("gone", 999, "ответ ?"))  # its conversation was deleted: dropped
    journal.append(answer("s3", q3, "ответ 3"))  # not held back by the lines before it
    assert journal.pending == 5
    assert journal.replay() == 2
    assert journal.pending == 0 and os.path.getsize(journal.path) == 0
    rows = conn.execute("SELECT question_id, content, created_at FROM messages WHERE role = 'assistant' "
                        "ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(q1, "ответ 1", 1000.0 + q1), (q3, "ответ 3", 1000.0 + q3)]
    with open(os.path.join(journal.dir, REJECTED), encoding="utf-8") as f:
        assert [json.loads(line)["question_id"] for line in f] == [q2]
    assert journal.replay() == 0  # nothing twice
    conn.close()
