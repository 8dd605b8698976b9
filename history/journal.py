"""Answers the history could not take when they ended (SQLite write-locked past its busy timeout,
PostgreSQL down): each is appended to this process's own journal file and fsynced, and written to the
history as soon as the database answers again (retried every RETRY_S, and at start), in the order
they ended, each exactly once. Exactly once: an answer names its question, and a question has one
answer (a unique index), so a journal line already in the history is a no-op when it is replayed again.

Files: <CHAT_JOURNAL_DIR>/<database key>/<host>-<pid>-<random>.jsonl, one per server process (gunicorn
workers, several hosts each with their own directory), flock()ed by that process while it lives. A
file whose process is gone (killed, restarted) is taken over and replayed by any process of the same
database, then deleted; a process's own file is emptied once everything in it is in the history."""
import fcntl
import glob
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from history import postgres
from history.connections import open_connection
from history.errors import UNAVAILABLE, ConversationGone, is_duplicate_answer
from history.store import add_message

RETRY_S = 1.0
REJECTED = "rejected.log"  # lines the history refused for another reason than being unavailable (JSON lines)
log = logging.getLogger(__name__)


def default_dir(target) -> str:
    """CHAT_JOURNAL_DIR when not set: beside the SQLite file, or beside the app for PostgreSQL."""
    app = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(app if postgres.is_url(target) else os.path.dirname(os.path.abspath(target)),
                        "history-journal")


def directory_for(base, target) -> str:
    """The journal directory of one database: its own, so that a file is never replayed into another."""
    name = str(target) if postgres.is_url(target) else os.path.abspath(target)
    if postgres.is_url(target):  # without the password: a key, not a secret
        name = name.split("@", 1)[-1]
    return os.path.join(base, hashlib.sha256(name.encode()).hexdigest()[:16])


class Journal:
    def __init__(self, directory, target, on_pending=lambda n: None):
        self.dir, self.target, self.on_pending = directory, target, on_pending
        self.lock, self.replay_lock = threading.Lock(), threading.Lock()
        self.pid, self.fd, self.path, self.done, self.pending = None, None, None, 0, 0
        self.wake = threading.Event()

    # -- writing ---------------------------------------------------------------------------------

    def save(self, conn, record: dict):
        """add_message(conn, **record); the journal instead when the database can't be written now
        (or this process has answers waiting in the journal: they go first). Returns the message id,
        or None for an answer kept in the journal."""
        reason = "earlier answers wait in the journal" if self.pending else "no connection to it"
        if not self.pending and conn is not None:
            try:
                return add_message(conn, **record)
            except UNAVAILABLE as e:
                reason = str(e)
        log.warning("history unavailable (%s): the answer to question %s is kept in the journal %s and written "
                    "to the history once the database is back", reason, record["question_id"], self.dir)
        self.append(record)
        return None

    def append(self, record: dict):
        line = (json.dumps(dict(record, created_at=record.get("created_at") or time.time()), ensure_ascii=False)
                + "\n").encode("utf-8")
        with self.lock:
            self._own()
            os.lseek(self.fd, 0, os.SEEK_END)
            os.write(self.fd, line)
            os.fsync(self.fd)
            self.pending += 1
            self.on_pending(self.pending)
        self.wake.set()

    def _own(self):
        """This process's file, created on first use (after a fork: a new one), flock()ed while it lives."""
        if self.pid == os.getpid():
            return
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(self.dir, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
        self.fd = os.open(self.path + ".new", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(self.path + ".new", self.path)  # locked before anyone can see it as a file to take over
        directory = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(directory)  # (the file's name survives a power cut too)
        finally:
            os.close(directory)
        self.pid, self.done, self.pending = os.getpid(), 0, 0

    # -- replaying -------------------------------------------------------------------------------

    def start(self):
        """The replay thread of this process: files left by processes that are gone, at once; this
        process's own answers whenever it has some; every RETRY_S until the database takes them."""
        threading.Thread(target=self._loop, daemon=True, name="history-journal").start()

    def _loop(self):
        while True:
            try:
                self.replay()
            except Exception:  # the thread must live on; the next round tries again
                log.exception("history journal replay failed")
            self.wake.wait(RETRY_S)
            self.wake.clear()

    def replay(self, wait=True) -> int:
        """Writes what the journal holds to the history; returns how many answers it wrote. Without
        wait, nothing when a replay is already under way."""
        if not self.replay_lock.acquire(blocking=wait):
            return 0
        try:
            written = self._replay_own() if self.pending else 0
            for path in sorted(glob.glob(os.path.join(self.dir, "*.jsonl")), key=_mtime):
                if path != self.path:
                    written += self._replay_orphan(path)
        finally:
            self.replay_lock.release()
        if written:
            log.info("history journal: %d answer(s) written to the history", written)
        return written

    def _replay_own(self) -> int:
        with self.lock:
            os.lseek(self.fd, self.done, os.SEEK_SET)
            data = _read_all(self.fd)
        used, rows, lines, _ = self._write(data)
        with self.lock:
            self.done += used
            self.pending -= lines
            if self.done == os.fstat(self.fd).st_size:  # everything is in the history: start over
                os.ftruncate(self.fd, 0)
                os.fsync(self.fd)
                self.done, self.pending = 0, 0
            self.on_pending(self.pending)
        return rows

    def _replay_orphan(self, path) -> int:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its process lives (or another one replays it)
        except BlockingIOError:
            os.close(fd)
            return 0
        try:
            _, rows, _, complete = self._write(_read_all(fd))
            if complete:  # (an unfinished last line: its process died writing it, before the answer ended)
                os.unlink(path)  # (under the lock: no one else is replaying it)
            return rows
        finally:
            os.close(fd)

    def _write(self, data: bytes):
        """Replays the complete lines of data in order until the database is unavailable; returns
        (bytes done, rows written, lines done, whether it got through)."""
        used, rows, lines, complete = 0, 0, 0, False
        conn = None
        try:
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # a line being written (or cut by a crash: dropped when the file is)
                if conn is None:
                    conn = open_connection(self.target)
                rows += self._write_one(conn, line)
                used, lines = used + len(line), lines + 1
            complete = True
        except UNAVAILABLE as e:
            log.warning("history still unavailable (%s): %d answer(s) wait in the journal %s", e,
                        self.pending, self.dir)
        finally:
            if conn is not None:
                conn.close()
        return used, rows, lines, complete

    def _write_one(self, conn, line) -> int:
        """1 when the line's answer was written now, 0 when it needs no writing (or never can)."""
        try:
            add_message(conn, **json.loads(line))
            return 1
        except ConversationGone:  # deleted meanwhile: its answer has nowhere to go
            return 0
        except UNAVAILABLE:
            raise
        except Exception as e:  # noqa: BLE001 - anything else: set aside, below
            if is_duplicate_answer(e):  # written before (a replay cut
                return 0  # short, or a save that did commit before its connection broke)
            self._reject(line, e)  # (retrying it forever would hold every later answer back)
            return 0

    def _reject(self, line, e):
        path = os.path.join(self.dir, REJECTED)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        log.error("history journal: an answer the history refuses (%s: %s) was moved to %s", type(e).__name__,
                  e, path)


def _read_all(fd) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0
