"""Soak: minutes of mixed load with random hang-ups against the gunicorn gateway, qwen_server (tiny
Qwen2) and the fake GigaChat, then a check of the history file and the servers (not part of CI).

    .venv/bin/python -m bench.soak [--minutes 10] [--clients 8] [--workers 2]

Clients ask on every route (/qwen, /gigachat, /v1; streamed or not), continue shared sessions from
several clients at once, inject GigaChat faults, delete sessions, read /history and the export,
and hang up at random moments (before headers, mid-stream, with bytes still unread). Afterwards:
- row count exact: every question sent (on a session not deleted) saved once, with one answer row;
- every pair right: each answer names its question; an echoed GigaChat answer repeats its question,
  and every context the fake GigaChat received pairs each question with its own answer;
- nothing of a deleted session left; the full-text index intact and complete;
- pool intact: no history connection or stream still held; RSS of both servers over time."""
import argparse
import json
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from urllib.parse import quote, urlsplit

import db
from bench import _common as c
from helpers import QUIET_ENV, http, start_gateway, start_qwen

ROUTES = ["/qwen", "/qwen?stream", "/v1 qwen", "/v1 qwen stream", "/gigachat", "/gigachat?stream",
          "/v1 gigachat", "/v1 gigachat stream"]
HANGUPS = {None: 0.6, "before_headers": 0.15, "mid_stream": 0.15, "unread_bytes": 0.1}
FAULTS = ["", "", "", "", " [[fault:slow=0.5]]", " [[fault:sleepstream=0.05]]", " [[fault:500]]",
          " [[fault:drop=2]]", " [[fault:blacklist]]"]
DONE_RE = re.compile(rb'"type":"done".*?"message_id":(\d+)')


class Load:
    def __init__(self, gw, fake, seed):
        self.gw, self.fake, self.rnd = gw, fake, random.Random(seed)
        self.lock = threading.Lock()
        self.sent = {}  # marker -> (sid or None, route)
        self.acked = {}  # message_id -> marker (a non-hung-up answer the client was told about)
        self.deleted, self.shared = set(), {"qwen": [], "gigachat": []}
        self.counts, self.errors = Counter(), []

    def raw(self, method, path, body=None, headers=None):
        u = urlsplit(self.gw.base_url)
        s = socket.create_connection((u.hostname, u.port), timeout=60)
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
        head += "Content-Type: application/json\r\n" if body is not None else ""
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(head.encode() + b"\r\n" + data)
        return s

    def one_exchange(self, rnd):
        route = rnd.choice(ROUTES)
        provider = "gigachat" if "gigachat" in route else "qwen"
        hang = rnd.choices(list(HANGUPS), weights=list(HANGUPS.values()))[0]
        if hang == "mid_stream" and "stream" not in route:
            hang = "before_headers"
        marker = "s" + uuid.uuid4().hex[:12]
        text = f"{marker} вопрос {rnd.randint(0, 999)}" + (rnd.choice(FAULTS) if provider == "gigachat" else "")
        new_sid = None
        with self.lock:
            pool = self.shared[provider]
            sid = rnd.choice(pool) if pool and rnd.random() < 0.5 else None
            if sid is None and rnd.random() < 0.1:  # a new shared session (named by an X-Session-ID)
                sid = new_sid = f"soak-{uuid.uuid4().hex[:8]}"
                route = f"/v1 {provider}" + (" stream" if rnd.random() < 0.5 else "")
            self.sent[marker] = (sid, route)
        stream = route.endswith("stream")
        if route.startswith("/v1"):
            body = {"model": provider, "stream": stream, "max_tokens": rnd.randint(4, 24),
                    "messages": [{"role": "user", "content": text}]}
            s = self.raw("POST", "/v1/chat/completions", body, {"X-Session-ID": sid} if sid else None)
        else:
            path = f"/{provider}?q={quote(text)}&max_tokens={rnd.randint(4, 24)}" + ("&stream=1" if stream else "")
            s = self.raw("GET", path + (f"&session={sid}" if sid else ""))
        self.counts[f"{route} hang-up={hang}"] += 1
        try:
            self.finish(s, rnd, hang, marker)
        finally:
            s.close()
        if new_sid:  # others continue it once it exists
            with self.lock:
                self.shared[provider].append(new_sid)

    def finish(self, s, rnd, hang, marker):
        if hang == "before_headers":
            time.sleep(rnd.uniform(0, 0.4))
            return
        if hang == "unread_bytes":
            time.sleep(rnd.uniform(0, 0.4))
            s.sendall(b"GET /health HTTP/1.1\r\n")
            return
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if hang == "mid_stream" and b"\r\n\r\n" in buf and len(buf) > rnd.randint(200, 900):
                return
        status = int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/") else 0
        self.counts[f"status {status}"] += 1
        if status == 500:
            self.errors.append(buf[-400:].decode("utf-8", "replace"))
        m = DONE_RE.search(buf) or re.search(rb'"message_id":(\d+)', buf)
        if status == 200 and m:
            with self.lock:
                self.acked[int(m.group(1))] = marker

    def side_request(self, rnd):
        """Reads, exports (sometimes left unread) and deletes."""
        kind = rnd.choice(["history", "sessions", "export", "delete"])
        self.counts[kind] += 1
        if kind == "delete":
            with self.lock:
                pool = self.shared[rnd.choice(["qwen", "gigachat"])]
                if len(pool) < 3:
                    return
                sid = pool.pop(rnd.randrange(len(pool)))
                self.deleted.add(sid)
            s = self.raw("DELETE", f"/history/{sid}")
        else:
            s = self.raw("GET", {"history": "/history?limit=20", "sessions": "/history/sessions",
                                 "export": "/history/export"}[kind])
        try:
            if kind == "export" and rnd.random() < 0.5:
                return  # left without reading
            while s.recv(65536):
                pass
        finally:
            s.close()

    def client(self, n, stop):
        rnd = random.Random(self.rnd.random() + n)
        while not stop.is_set():
            try:
                (self.side_request if rnd.random() < 0.08 else self.one_exchange)(rnd)
            except OSError as e:
                self.counts[f"client {type(e).__name__}"] += 1


def rss_mb(pid):
    """Resident memory of a process and all its descendants, MB."""
    total = 0
    for p in c.process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def metric(gw, name):
    _, _, text = http("GET", gw.base_url + "/metrics", timeout=10)
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


FAULT_RE = re.compile(r"\[\[fault:[^\]]*\]\]")


def echo_of(question):
    """What the fake GigaChat answers (a canned text for [[fault:blacklist]], cut by max_tokens: any prefix)."""
    return "" if "blacklist" in question else "Эхо: " + FAULT_RE.sub("", question).strip()


def check_history(db_path, load):
    """Problems found in the history file (an empty list when all is right), and the answer statuses."""
    problems, conn, expected = [], sqlite3.connect(db_path), 0
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT q.id, q.conversation_id AS sid, q.content, q.provider, a.id AS aid, a.content AS "
                        "answer, a.status, a.conversation_id AS asid FROM messages q LEFT JOIN messages a "
                        "ON a.question_id = q.id WHERE q.role = 'user'").fetchall()
    by_marker = {}
    for r in rows:
        by_marker.setdefault(r["content"].split()[0], []).append(r)
    for marker, (sid, route) in load.sent.items():
        found = by_marker.pop(marker, [])
        expected += sid not in load.deleted
        if sid in load.deleted:  # deleted (or written again by a request that raced the delete)
            pass
        elif len(found) != 1:
            problems.append(f"{route} {marker}: {len(found)} question rows")
            continue
        for r in found:
            if r["aid"] is None:
                problems.append(f"{route} {marker}: question {r['id']} has no answer row")
            elif r["asid"] != r["sid"]:
                problems.append(f"{route} {marker}: answer {r['aid']} is in another conversation")
            elif r["provider"] == "gigachat" and r["status"] in ("ok", "cancelled") and \
                    echo_of(r["content"]) and not echo_of(r["content"]).startswith(r["answer"]):
                problems.append(f"{route} {marker}: answer {r['answer']!r} is not its question's echo")
    problems += [f"unexpected question rows {m}" for m in by_marker]
    orphans = conn.execute("SELECT count(*) FROM messages WHERE role = 'assistant' AND (question_id IS NULL OR "
                           "question_id NOT IN (SELECT id FROM messages))").fetchone()[0]
    if orphans:
        problems.append(f"{orphans} answers without their question")
    for mid, marker in load.acked.items():
        row = conn.execute("SELECT q.content FROM messages a JOIN messages q ON q.id = a.question_id "
                           "WHERE a.id = ?", (mid,)).fetchone()
        if row is None and load.sent[marker][0] not in load.deleted:
            problems.append(f"answer {mid} that a client got is not saved")
        elif row is not None and row[0].split()[0] != marker:
            problems.append(f"answer {mid} names another question than the one it answered")
    statuses = Counter(r[0] for r in conn.execute("SELECT status FROM messages WHERE role = 'assistant'"))
    conn.close()
    indexer = db.connect(db_path)
    db.index_pending(indexer)  # what maintenance has not indexed yet, then a full count
    indexer.close()
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
    n_fts = conn.execute("SELECT count(*) FROM messages_fts_docsize").fetchone()[0]
    n_msg = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    if n_fts != n_msg:
        problems.append(f"full-text index has {n_fts} documents for {n_msg} messages")
    conn.close()
    return problems, statuses, (expected, n_msg)


def check_contexts(fake):
    """Every context the fake GigaChat got (its last 100 requests) pairs each question with its answer."""
    _, _, reqs = http("GET", fake.base_url + "/_debug/requests", timeout=10)
    bad = 0
    for req in reqs:
        turns = [m for m in req["body"]["messages"] if m["role"] != "system"][:-1]
        for q, a in zip(turns[::2], turns[1::2]):
            bad += not (q["role"] == "user" and a["role"] == "assistant" and (
                echo_of(q["content"]).startswith(a["content"]) or not echo_of(q["content"])))
    return len(reqs), bad


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on `kill` too
    from tools.make_models import ensure_tiny_qwen
    tmp = c.tmpdir("soak-")
    with c.Servers() as servers:
        qwen = servers.add(start_qwen(str(ensure_tiny_qwen()), "-l", "512", env=QUIET_ENV))
        fake = servers.add(c.start_fake())
        db_path = os.path.join(tmp, "history.db")
        gw = servers.add(start_gateway(qwen.base_url, fake, db_path, args.workers, LOG_LEVEL="WARNING",
                                       GIGACHAT_MAX_CONCURRENCY="2", GIGACHAT_TIMEOUT="10"))
        load, stop = Load(gw, fake, args.seed), threading.Event()
        threads = [threading.Thread(target=load.client, args=(n, stop), daemon=True) for n in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        rss = []  # (minute, gateway MB, qwen_server MB)
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(min(10.0, max(0.1, args.minutes * 60 - (time.monotonic() - t0))))
            rss.append(((time.monotonic() - t0) / 60, rss_mb(gw.pid), rss_mb(qwen.pid)))
        stop.set()
        for t in threads:
            t.join(60)
        ran = time.monotonic() - t0
        time.sleep(2.0)  # hung-up exchanges settle; maintenance indexes and empties the WAL
        in_use, streams = metric(gw, "chat_history_connections_in_use"), metric(gw, "chat_active_streams")
        wal = os.path.getsize(db_path + "-wal") if os.path.exists(db_path + "-wal") else 0
        contexts, bad_contexts = check_contexts(fake)
        problems, statuses, n_msg = check_history(db_path, load)
        with open(gw.log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        problems += [f"gateway log: {block[:500]} … {block[-1500:]}" for block in log.split("\n2")
                     if "Traceback" in block or " ERROR " in block][:3]
        problems += [f"a 500 answer: {body}" for body in load.errors[:3]]
    c.rmtree(tmp)
    report(args, load, ran, rss, statuses, n_msg, in_use, streams, wal, contexts, bad_contexts, problems)
    return 1 if problems or bad_contexts or in_use or streams else 0


def report(args, load, ran, rss, statuses, n_msg, in_use, streams, wal, contexts, bad_contexts, problems):
    c.header(f"Soak: {ran / 60:.1f} min, {args.clients} clients, gunicorn {args.workers} workers")
    exchanges = sum(n for k, n in load.counts.items() if "hang-up=" in k)
    hangups = sum(n for k, n in load.counts.items() if "hang-up=" in k and not k.endswith("None"))
    warm = [r for r in rss if r[0] >= 1.0] or rss
    rows = [("exchanges sent", exchanges), ("of them hung up at random moments", hangups),
            ("sessions deleted mid-load", len(load.deleted)),
            ("questions expected (sessions not deleted) / messages in the file", f"{n_msg[0]} / {n_msg[1]}"),
            ("answers clients received, each found saved under its own question", len(load.acked)),
            ("answer statuses", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))),
            ("questions without exactly one answer, wrong pairs, leftovers", len(problems)),
            ("GigaChat contexts checked / mixed pairs", f"{contexts} / {bad_contexts}"),
            ("history connections still held / streams still open", f"{in_use:g} / {streams:g}"),
            ("WAL at the end (bytes)", wal),
            ("gateway RSS MB after 1 min → end", f"{c.fmt(warm[0][1], 1)} → {c.fmt(rss[-1][1], 1)}"),
            ("qwen_server RSS MB after 1 min → end", f"{c.fmt(warm[0][2], 1)} → {c.fmt(rss[-1][2], 1)}")]
    print(c.md_table(["", ""], rows))
    marks = [r for i, r in enumerate(rss) if i == len(rss) - 1 or int(r[0]) != int(rss[i + 1][0])]
    print("\nRSS MB (gateway / qwen_server) by minute:",
          ", ".join(f"{m:.0f}: {g:.0f} / {q:.0f}" for m, g, q in marks))
    print("\nBy route and hang-up:", ", ".join(f"{k}: {v}" for k, v in sorted(load.counts.items())))
    for line in problems[:20]:
        print("PROBLEM:", line)
    print("\nRESULT:", "OK" if not (problems or bad_contexts or in_use or streams) else "FAILED")


if __name__ == "__main__":
    raise SystemExit(main())
