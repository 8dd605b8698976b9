#!/usr/bin/env python
"""Where the gateway's time goes per request: cProfile over the real chat.py app (Flask test
client, so no HTTP server in the picture) talking to real upstream subprocesses (the fake
GigaChat with TCP_NODELAY, qwen_server on tiny-qwen2), grouped by component.

    .venv/bin/python -m bench.gateway_profile [--quick] [--repo OTHER_CHECKOUT] [--top 15]

--repo profiles chat.py from another checkout (e.g. a patched copy), against the same kind of
upstreams, so a change's effect shows component by component. The history database is a fresh
file on the same disk as the repo's .cache/ (fsync costs are the disk's)."""
import argparse
import cProfile
import os
import pstats
import sys
import time

from bench._common import CACHE_DIR, Servers, fmt, header, md_table, median, rmtree, start_fake
from helpers import QUIET_ENV, REPO_ROOT, gigachat_env, start_qwen

# chat.py and the modules it imports, dropped from sys.modules before importing another checkout's
PROJECT_MODULES = ("chat", "db", "db_maintenance", "exchange", "api_common", "openai_format", "openapi", "client_watch",
                   "gigachat_client", "qwen_client")  # the last four: checkouts before the packages
PROJECT_PACKAGES = ("common", "gateway", "providers", "history")

# (component, test on "file:function") in order; the first that matches wins.
COMPONENTS = [
    ("upstream wait (socket reads: the upstream's own time)",
     lambda f, fn: f == "~" and ("recv" in fn or "read" in fn and "socket" in fn)),
    ("SQLite: close (checkpoint + WAL delete when last)", lambda f, fn: f == "~" and "'close' of 'sqlite3" in fn),
    ("SQLite: connect", lambda f, fn: f == "~" and "sqlite3.connect" in fn),
    ("SQLite: execute/fetch (PRAGMAs, reads, writes, commits)", lambda f, fn: f == "~" and "sqlite3" in fn),
    ("socket send/connect/close", lambda f, fn: f == "~" and ("socket" in fn or "sendall" in fn)),
    ("gigachat SDK + httpx/httpcore/h11 + pydantic",
     lambda f, fn: any(k in f for k in ("/gigachat/", "/httpx/", "/httpcore/", "/h11/", "/pydantic", "anyio",
                                         "typing.py")) or "pydantic_core" in fn),
    ("requests/urllib3/http.client (Qwen client)",
     lambda f, fn: any(k in f for k in ("/requests/", "/urllib3/", "http/client.py", "email/", "urllib/"))),
    ("Flask/Werkzeug/Jinja (incl. test client)",
     lambda f, fn: any(k in f for k in ("/flask/", "/werkzeug/", "/jinja2/", "/markupsafe/", "/blinker/"))),
    ("prometheus_client", lambda f, fn: "/prometheus_client/" in f),
    ("json", lambda f, fn: "/json/" in f or "json" in fn),
    ("logging", lambda f, fn: "/logging/" in f),
    ("project code (chat, db, gateway/, common/, providers/, history/)",
     lambda f, fn: os.path.basename(f) in ("chat.py", "db.py") or
     ("site-packages" not in f and any(f"/{pkg}/" in f for pkg in PROJECT_PACKAGES))),
]


def classify(stats):
    per = {name: 0.0 for name, _ in COMPONENTS}
    per["other (stdlib: uuid, contextlib, threading, ...)"] = 0.0
    for (f, _line, fn), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():
        for name, test in COMPONENTS:
            if test(f, fn):
                per[name] += tt
                break
        else:
            per["other (stdlib: uuid, contextlib, threading, ...)"] += tt
    return per


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, help="profiled requests per endpoint (default 300, quick 80)")
    ap.add_argument("--repo", default=REPO_ROOT, help="checkout whose chat.py is profiled")
    ap.add_argument("--top", type=int, default=12, help="also list the top functions by own time")
    a = ap.parse_args()
    n = a.n or (80 if a.quick else 300)
    repo = os.path.abspath(a.repo)
    from tools.make_models import ensure_tiny_qwen
    tiny = str(ensure_tiny_qwen())
    os.makedirs(CACHE_DIR, exist_ok=True)
    dbdir = os.path.join(CACHE_DIR, f"profile-{os.getpid()}")
    os.makedirs(dbdir, exist_ok=True)
    results = []
    try:
        with Servers() as S:
            fake = S.add(start_fake())
            qwen = S.add(start_qwen(tiny, "-l", "512", env=QUIET_ENV))
            for k in list(os.environ):
                if k.startswith(("GIGACHAT_", "QWEN_", "CHAT_", "DEFAULT_SYSTEM")):
                    del os.environ[k]
            os.environ.update(gigachat_env(fake), NO_DOTENV="1", CHAT_DB=os.path.join(dbdir, "history.db"),
                              QWEN_URL=qwen.base_url)
            # chat.py and its modules from `repo`, not from this checkout
            for m in [m for m in sys.modules if m in PROJECT_MODULES or m.split(".")[0] in PROJECT_PACKAGES]:
                del sys.modules[m]
            sys.path.insert(0, repo)  # the A/B itself: import chat from that checkout, in this process
            import chat
            assert os.path.dirname(os.path.abspath(chat.__file__)) == repo, chat.__file__
            app = chat.create_app()
            client = app.test_client()
            for label, path in (("GET /gigachat?q=", "/gigachat?q=Hello%20{i}"),
                                ("GET /qwen?q=&max_tokens=1", "/qwen?q=Hello%20{i}&max_tokens=1&temperature=0")):
                for i in range(20):
                    r = client.get(path.format(i=i))
                    assert r.status_code == 200, r.get_data(as_text=True)
                wall = []
                for i in range(n):
                    t0 = time.perf_counter()
                    client.get(path.format(i=i))
                    wall.append((time.perf_counter() - t0) * 1000)
                prof = cProfile.Profile()
                prof.enable()
                for i in range(n):
                    client.get(path.format(i=i))
                prof.disable()
                st = pstats.Stats(prof)
                results.append((label, median(wall), st.total_tt * 1000 / n, classify(st), st))
    finally:
        rmtree(dbdir)

    header(f"Gateway per-request profile ({'this checkout' if repo == REPO_ROOT else repo})", [
        f"cProfile over {n} requests per endpoint, in-process Flask test client (no HTTP server), real upstream "
        f"subprocesses (fake GigaChat with TCP_NODELAY; qwen_server on tiny-qwen2). cProfile inflates Python-heavy "
        f"parts; the unprofiled wall median is given for scale."])
    for label, wall, total, per, st in results:
        print(f"**{label}**: {fmt(wall)} ms per request unprofiled (median), {fmt(total)} ms profiled\n")
        rows = [[name, fmt(v * 1000 / n, 3), f"{v * 1000 / n / total * 100:.0f}%"]
                for name, v in sorted(per.items(), key=lambda kv: -kv[1]) if v * 1000 / n >= 0.005]
        print(md_table(["component (own time)", "ms / request", "share"], rows))
        print()
        if a.top:
            top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:a.top]
            rows = [[f"`{os.path.basename(f)}:{line}({fn})`" if f != "~" else f"`{fn}`", nc,
                     fmt(tt * 1000 / n, 3)] for (f, line, fn), (_cc, nc, tt, _ct, _cl) in top]
            print(md_table(["function", "calls", "own ms / request"], rows))
            print()


if __name__ == "__main__":
    main()
