"""Shared plumbing for the bench/ scripts: machine description, percentiles, Markdown tables, a
keep-alive HTTP client and wrk. Their servers start and stop as the tests' do, with tests/helpers.py.

The scripts only ever talk to 127.0.0.1 servers they start themselves."""
import datetime
import http.client as httpclient
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from urllib.parse import urlsplit

from helpers import REPO_ROOT, clean_env, live_processes, start_fake_gigachat, stop_process

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CACHE_DIR = os.path.join(REPO_ROOT, ".cache", "bench")  # .cache/ is git-ignored

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are local; never try a hub


# -- machine and environment ----------------------------------------------------------------------

def cpu_model() -> str:
    from engines.llamacpp_cpu import cpuinfo_field
    return cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cores} cores, {cpu_model()}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"{platform.system()} {platform.release()}; {datetime.date.today().isoformat()}")


class Servers:
    """Stops every server it started, in reverse order, whatever happens."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            try:
                stop_process(p)
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass


def tmpdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)


def rmtree(d):
    shutil.rmtree(d, ignore_errors=True)


# -- statistics and output --------------------------------------------------------------------------

def pct(values, p):
    """Percentile by linear interpolation (p in 0..100)."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(values):
    return statistics.median(values) if values else float("nan")


def fmt(x, digits=2):
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.{digits}f}"


def md_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def header(title, notes=()):
    print(f"\n### {title}\n")
    print(f"Machine: {machine_line()}")
    for n in notes:
        print(f"{n}")
    print()


# -- a small keep-alive HTTP client (lower and steadier overhead than requests) ---------------------------

class Client:
    def __init__(self, base_url, timeout=60.0):
        u = urlsplit(base_url)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.conn = None

    def _connect(self):
        self.conn = httpclient.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn.connect()
        import socket
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, method, path, body, headers):
        """Sends one request on the kept-alive connection, reconnecting once if the server closed
        it meanwhile; returns (response, send time)."""
        data = json.dumps(body, ensure_ascii=False).encode() if isinstance(body, (dict, list)) else body
        hdrs = dict(headers or {})
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=data, headers=hdrs)
                return self.conn.getresponse(), t0
            except (httpclient.HTTPException, ConnectionError, OSError):
                self.close()
                if attempt:
                    raise

    def request(self, method, path, body=None, headers=None):
        """(status, body bytes, seconds) for one request on the kept-alive connection."""
        resp, t0 = self._send(method, path, body, headers)
        try:
            raw = resp.read()
        except (httpclient.HTTPException, ConnectionError, OSError):
            self.close()
            raise
        dt = time.perf_counter() - t0
        if resp.will_close:
            self.close()
        return resp.status, raw, dt

    def stream(self, method, path, body=None, headers=None):
        """Streams an SSE answer: (status, t_first_byte, [(t, data)...], t_end), times from the send."""
        resp, t0 = self._send(method, path, body, headers)
        try:
            t_first, events, buf = None, [], b""
            while True:
                piece = resp.read1(65536)
                if not piece:
                    break
                now = time.perf_counter() - t0
                if t_first is None:
                    t_first = now
                buf += piece
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    for line in frame.split(b"\n"):
                        if line.startswith(b"data: "):
                            events.append((now, line[6:]))
            t_end = time.perf_counter() - t0
            if resp.will_close:
                self.close()
            return resp.status, t_first, events, t_end
        except (httpclient.HTTPException, ConnectionError, OSError):
            self.close()
            raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- load generation ------------------------------------------------------------------------------------

WRK_LUA = r"""
wrk.method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
if body and #body > 0 then wrk.body = body; wrk.headers["Content-Type"] = "application/json" end
local auth = os.getenv("WRK_AUTH")
if auth and #auth > 0 then wrk.headers["Authorization"] = auth end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p95_us":%d,"p99_us":%d}\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99)))
end
"""


def have_wrk():
    return shutil.which("wrk") is not None


def load_wrk(url, seconds, conns, method="GET", body=None, auth=None, threads=1):
    """{rps, p50_ms, p95_ms, p99_ms, errors} from wrk (C, so the load generator steals little CPU)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
        script = f.name
    env = dict(os.environ, WRK_METHOD=method, WRK_BODY=json.dumps(body, ensure_ascii=False) if body else "",
               WRK_AUTH=auth or "")
    try:
        out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(seconds))}s", "--timeout", "30s",
                              "-s", script, url], env=env, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(script)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[8:])
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1000,
            "p95_ms": r["p95_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "errors": r["status_errors"] + r["socket_errors"], "requests": r["requests"]}


def load_threads(url, seconds, conns, method="GET", body=None, auth=None, threads=None):
    """Fallback when wrk is absent: `conns` threads, each with its own keep-alive connection."""
    import threading
    u = urlsplit(url)
    path = u.path + (("?" + u.query) if u.query else "")
    base = f"{u.scheme}://{u.netloc}"
    lat, errors, stop_at = [], [0], time.perf_counter() + seconds
    lock = threading.Lock()
    hdrs = {"Authorization": auth} if auth else {}

    def worker():
        c, mine, bad = Client(base), [], 0
        while time.perf_counter() < stop_at:
            try:
                st, _, dt = c.request(method, path, body, hdrs)
                mine.append(dt)
                bad += st >= 400
            except OSError:
                bad += 1
        c.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return {"rps": len(lat) / wall, "p50_ms": pct(lat, 50) * 1000, "p95_ms": pct(lat, 95) * 1000,
            "p99_ms": pct(lat, 99) * 1000, "errors": errors[0], "requests": len(lat)}


def load(url, seconds, conns, **kw):
    return (load_wrk if have_wrk() else load_threads)(url, seconds, conns, **kw)


def load_tool():
    return "wrk (1 thread)" if have_wrk() else "Python threads + http.client (wrk not installed)"


def start_fake():
    """The fake GigaChat (tests/fake_gigachat.py, TCP_NODELAY on) on a free port."""
    return start_fake_gigachat(env=clean_env())


def process_tree(pid):
    """pid and all its descendants (e.g. gunicorn and its workers)."""
    kids = {}
    for child, ppid, _ in live_processes():
        kids.setdefault(ppid, []).append(child)
    todo = [pid]
    while todo:
        p = todo.pop()
        yield p
        todo += kids.get(p, [])


def cpu_seconds(pid) -> float:
    """user+system CPU of a process and all its descendants, seconds."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total
