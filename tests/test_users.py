"""Users, on real gateways over real HTTP: two users and the admin across every history endpoint on both
backends (someone else's conversation is a 404 and is never written to), keys in either header, the keyless
tool turning keyed once a user exists, keys never stored or logged, the access log and /metrics naming
users, conversations saved before users belonging to the admin."""
import json
import os
import re
import sqlite3
import subprocess
import threading
import uuid

import pytest
import requests

import db
from conftest import start_gateway
from helpers import PYTHON, REPO_ROOT, clean_env, stop_process
from history.users import key_hash
from test_history_db import make_v1
from users_helpers import add_user, ask, users_cli

ADMIN_KEY = "admin-key-for-tests-0123456789abcdef"
DEAD = "http://127.0.0.1:9"  # no Qwen: the tests ask GigaChat (the fake)


def readme_blocks(lang):
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        return re.findall(rf"^```{lang}\n(.*?)^```", f.read(), re.S | re.M)


def get(base, path, key, **params):
    return requests.get(base + path, params=params, headers={"X-API-Key": key} if key else {}, timeout=30)


@pytest.fixture(params=["sqlite", "postgres"])
def team(request, fake_gigachat, tmp_path):
    """A keyed gateway (CHAT_API_KEY) with users alice and bob, each with one conversation, and the admin's."""
    target = str(tmp_path / "history.db") if request.param == "sqlite" else \
        request.getfixturevalue("postgres").new_database()
    gw = start_gateway(DEAD, fake_gigachat, tmp_path, CHAT_DB=target, CHAT_API_KEY=ADMIN_KEY, LOG_LEVEL="INFO")
    keys = {"alice": add_user(target, "alice"), "bob": add_user(target, "bob"), "admin": ADMIN_KEY}
    sessions = {}
    questions = (("alice", "моя заметка hunter2"), ("bob", "вопрос Боба"), ("admin", "вопрос админа"))
    for name, q in questions:
        r = ask(gw.base_url, keys[name], q)
        assert r.status_code == 200, r.text
        sessions[name] = r.json()["session"]
    yield {"gw": gw, "base": gw.base_url, "target": target, "keys": keys, "sessions": sessions}
    stop_process(gw)


def session_ids(base, key, **params):
    r = get(base, "/history/sessions", key, **params)
    assert r.status_code == 200, r.text
    return {s["id"] for s in r.json()["sessions"]}


def test_each_user_sees_only_their_own_conversations(team):
    base, keys, sessions = team["base"], team["keys"], team["sessions"]
    for me, other in (("alice", "bob"), ("bob", "alice")):
        key, mine, theirs = keys[me], sessions[me], sessions[other]
        assert session_ids(base, key) == {mine}
        assert {m["session"] for m in get(base, "/history", key).json()["messages"]} == {mine}
        assert get(base, "/history", key, session=theirs).json()["messages"] == []
        assert get(base, f"/history/{mine}", key).status_code == 200
        r = get(base, f"/history/{theirs}", key)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_session"
        lines = [json.loads(ln) for ln in get(base, "/history/export", key).text.splitlines()]
        assert {m["session"] for m in lines} == {mine} and len(lines) == 2
        assert get(base, "/history/export", key, session=theirs).text == ""
    # a search for alice's note finds it for alice only
    assert [m["content"] for m in get(base, "/history", keys["alice"], q="hunter2").json()["messages"]] \
        == ["Эхо: моя заметка hunter2", "моя заметка hunter2"]  # (the fake GigaChat echoes)
    assert get(base, "/history", keys["bob"], q="hunter2").json()["messages"] == []


def test_someone_elses_conversation_can_be_neither_continued_nor_deleted(team):
    base, keys, alices = team["base"], team["keys"], team["sessions"]["alice"]
    bob = {"Authorization": f"Bearer {team['keys']['bob']}"}
    before = get(base, f"/history/{alices}", keys["alice"]).json()["messages"]
    r = ask(base, keys["bob"], "продолжаю чужой", session=alices)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_session"
    r = requests.post(base + "/ask", json={"q": "и так", "session": alices}, headers=bob, timeout=30)
    assert r.status_code == 404
    r = requests.post(base + "/v1/chat/completions", headers={**bob, "X-Session-ID": alices}, timeout=30,
                      json={"model": "gigachat", "messages": [{"role": "user", "content": "и через v1"}]})
    assert r.status_code == 404
    r = requests.delete(base + f"/history/{alices}", headers=bob, timeout=30)
    assert r.status_code == 404
    assert get(base, f"/history/{alices}", keys["alice"]).json()["messages"] == before  # nothing added
    # the owner continues it; and the admin cannot write into it either
    assert ask(base, keys["alice"], "дальше", session=alices).status_code == 200
    assert ask(base, ADMIN_KEY, "админ пишет", session=alices).status_code == 404
    assert len(get(base, f"/history/{alices}", keys["alice"]).json()["messages"]) == len(before) + 2
    assert requests.delete(base + f"/history/{alices}", headers={"X-API-Key": keys["alice"]},
                           timeout=30).status_code == 200


def test_two_users_racing_for_one_new_session_id_never_share_it(team):
    """alice and bob name the same new X-Session-ID at once: one gets it, the other a 404, and every row of it
    is the winner's (the ownership check is in the transaction that saves, not only before it)."""
    base, keys = team["base"], team["keys"]
    conn = db.open_connection(team["target"])
    try:
        for round_ in range(6):
            sid = f"race-{round_}-{uuid.uuid4().hex[:8]}"
            replies = {}

            def post(name):
                replies[name] = requests.post(
                    base + "/v1/chat/completions", timeout=30,
                    headers={"Authorization": f"Bearer {keys[name]}", "X-Session-ID": sid},
                    json={"model": "gigachat", "messages": [{"role": "user", "content": f"я {name}"}]})
            threads = [threading.Thread(target=post, args=(name,)) for name in ("alice", "bob")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            codes = sorted(r.status_code for r in replies.values())
            assert codes == [200, 404], f"round {round_}: {codes}"
            winner = next(name for name, r in replies.items() if r.status_code == 200)
            owners = {r[0] for r in conn.execute("SELECT user_id FROM messages WHERE conversation_id = ?", (sid,))}
            contents = {r[0] for r in conn.execute("SELECT content FROM messages WHERE conversation_id = ? AND "
                                                   "role = 'user'", (sid,))}
            assert len(owners) == 1 and contents == {f"я {winner}"}
    finally:
        conn.close()


def test_the_admin_sees_everything_and_filters_by_user(team):
    base, keys, sessions = team["base"], team["keys"], team["sessions"]
    for admin_key in (ADMIN_KEY, add_user(team["target"], "root", "--admin")):
        assert session_ids(base, admin_key) == set(sessions.values())
        assert session_ids(base, admin_key, user="alice") == {sessions["alice"]}
        assert session_ids(base, admin_key, user="admin") == {sessions["admin"]}
        assert {m["session"] for m in get(base, "/history", admin_key, user="bob").json()["messages"]} \
            == {sessions["bob"]}
        assert get(base, f"/history/{sessions['bob']}", admin_key).status_code == 200
        assert len(get(base, "/history", admin_key, q="hunter2").json()["messages"]) == 2
        assert len(get(base, "/history/export", admin_key).text.splitlines()) == 6
        assert get(base, "/history/sessions", admin_key, user="nobody").status_code == 404
    r = get(base, "/history/sessions", keys["alice"], user="bob")  # ?user= is no way around it for a user
    assert {s["id"] for s in r.json()["sessions"]} == {sessions["alice"]}
    assert requests.delete(base + f"/history/{sessions['bob']}", headers={"X-API-Key": ADMIN_KEY},
                           timeout=30).status_code == 200


def stored_bytes(target) -> bytes:
    """Every byte the history holds: the SQLite file and its WAL, or a pg_dump of the PostgreSQL database."""
    if target.startswith("postgresql://"):
        from pg_server import _bin
        return subprocess.run([_bin("pg_dump"), "--data-only", target], capture_output=True, check=True,
                              timeout=60).stdout
    stored = b""
    for suffix in ("", "-wal"):
        if os.path.exists(target + suffix):
            with open(target + suffix, "rb") as f:
                stored += f.read()
    return stored


def test_keys_are_needed_in_either_header_and_never_stored_or_logged(team):
    base, keys = team["base"], team["keys"]
    assert requests.get(base + "/history", timeout=10).status_code == 401
    assert get(base, "/history", "dac_not-a-key").status_code == 401
    assert requests.get(base + "/health", timeout=10).status_code == 200
    assert requests.get(base + "/", headers={"Accept": "text/html"}, timeout=10).status_code == 200
    r = requests.get(base + "/whoami", headers={"Authorization": f"Bearer {keys['bob']}"}, timeout=10)
    assert r.json() == {"user": "bob", "admin": False, "auth_required": True}
    metrics = get(base, "/metrics", ADMIN_KEY).text
    assert 'chat_user_requests_today{user="alice"} 1.0' in metrics and 'user="bob"' in metrics
    with open(team["gw"].log_path, encoding="utf-8") as f:
        log = f.read()
    assert '"user": "alice"' in log and '"user": "bob"' in log
    stored = stored_bytes(team["target"])
    assert key_hash(keys["alice"]).encode() in stored  # (what is kept instead: the search reads the right place)
    for key in (keys["alice"], keys["bob"]):
        assert key not in log and key.encode() not in stored
        assert key[4:20].encode() not in stored  # (not even a piece of it)


def test_a_keyless_gateway_needs_keys_once_a_user_exists(fake_gigachat, tmp_path):
    target = str(tmp_path / "history.db")
    gw = start_gateway(DEAD, fake_gigachat, tmp_path, CHAT_DB=target)
    try:
        base = gw.base_url
        old = requests.get(base + "/gigachat", params={"q": "до пользователей"}, timeout=30)
        old = old.json()["session"]
        assert requests.get(base + "/whoami", timeout=10).json()["auth_required"] is False
        key = add_user(target, "alice")
        assert requests.get(base + "/history/sessions", timeout=10).status_code == 401
        assert requests.get(base + "/config", timeout=10).status_code == 401  # (/config too: it needs the key)
        assert get(base, "/config", key).json()["auth_required"] is True
        assert session_ids(base, key) == set()  # the keyless user's conversations are the admin's
        root = add_user(target, "root", "--admin")
        assert session_ids(base, root) == {old} == session_ids(base, root, user="admin")
    finally:
        stop_process(gw)


def test_conversations_saved_before_users_belong_to_the_admin(fake_gigachat, tmp_path):
    path = str(tmp_path / "history.db")
    c = make_v1(path)
    c.execute("INSERT INTO conversations VALUES ('old', 'qwen', NULL, NULL, 'старая', 0, 0)")
    c.execute("INSERT INTO messages (conversation_id, role, content, provider, created_at) "
              "VALUES ('old', 'user', 'старый вопрос', 'qwen', 0)")
    c.close()
    key = add_user(path, "alice")  # the CLI migrates the file, as the gateway does
    assert sqlite3.connect(path).execute("SELECT user_id FROM conversations").fetchall() == [(0,)]
    gw = start_gateway(DEAD, fake_gigachat, tmp_path, CHAT_DB=path, CHAT_API_KEY=ADMIN_KEY)
    try:
        assert session_ids(gw.base_url, key) == set()
        assert get(gw.base_url, "/history/old", key).status_code == 404
        assert session_ids(gw.base_url, ADMIN_KEY) == {"old"}
        assert ask(gw.base_url, ADMIN_KEY, "продолжаю", session="old").status_code == 200
    finally:
        stop_process(gw)


def test_cli_refuses_what_it_cannot_do(tmp_path):
    target = str(tmp_path / "history.db")
    add_user(target, "alice", "--requests-per-minute", 5)
    for args in (("add", "alice"), ("add", "admin"), ("add", "a b"), ("rotate", "nobody"), ("remove", "nobody"),
                 ("add", "zed", "--tokens-per-day", 0)):
        r = users_cli(target, *args, check=False)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, (args, r.stderr)
    listing = users_cli(target, "list").stdout
    assert "alice" in listing and "5" in listing and "never" in listing and "dac_" not in listing


def test_readme_users_section_runs_as_written(fake_gigachat, tmp_path):
    """The README's users block, line by line in one bash, against a running gateway on its database."""
    (block,) = [b for b in readme_blocks("sh") if "chat.py users add" in b]
    target = str(tmp_path / "history.db")
    gw = start_gateway(DEAD, fake_gigachat, tmp_path, CHAT_DB=target, CHAT_API_KEY=ADMIN_KEY)
    try:
        script = "set -e -o pipefail\nset -x\n" + block.replace("127.0.0.1:5000", gw.base_url.split("//")[1])
        env = {k: v for k, v in {**os.environ, **clean_env(CHAT_DB=target),
                                 "PATH": os.path.dirname(PYTHON) + os.pathsep + os.environ["PATH"]}.items()
               if v is not None}
        script += '\necho "ALICE=$ALICE"\n'
        r = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        assert "Эхо: Привет" in out and '"error"' not in out  # Cyrillic in, Cyrillic out
        sessions = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{"sessions"')]
        assert len(sessions) == 2 and all(len(s["sessions"]) == 1 for s in sessions)  # alice's, and root's view
        rotated = out.strip().splitlines()[-1].split("=", 1)[1]
        assert get(gw.base_url, "/history", rotated).status_code == 401  # removed in the last line
        listing = users_cli(target, "list").stdout
        (root,) = [ln for ln in listing.splitlines() if ln.startswith("root ")]
        assert "alice" not in listing and "yes" in root and "UTC" in root  # an admin, last used just now
    finally:
        stop_process(gw)
