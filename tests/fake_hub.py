#!/usr/bin/env python3
"""A fake Hugging Face Hub for tests: the few endpoints huggingface_hub (2.x) calls to find and download
a model, so qwen_server's `-m owner/repo:QUANT` runs for real against HF_ENDPOINT=http://127.0.0.1:PORT.

    python tests/fake_hub.py --port 8766 --repos repos.json [--rate BYTES_PER_S] [--cut-after BYTES]
                             [--corrupt FILE]

repos.json: {"owner/repo": {"BRANCH": {"FILE": "/path/on/disk" | {"text": "..."} | {"zeros": SIZE}}}}
({"zeros": N}: N zero bytes, listed with a made-up sha256, for a file too big to have); each branch's commit
is a fixed sha1 of (repo, branch). Files over 10 kB and weights are LFS files (sha256 listed), the rest
plain git blobs (git sha1 listed), as on the hub.

  GET  /api/models/{repo}/revision/{rev}[?blobs=true]  {"id", "sha", "siblings": [{"rfilename", "size",
                                                       "blobId", "lfs": {"size", "sha256", "pointerSize"}}]}
  GET  /api/models/{repo}/refs                         {"branches": [{"name", "ref", "targetCommit"}], ...}
  HEAD /{repo}/resolve/{rev}/{file}                    X-Repo-Commit, ETag (X-Linked-Etag, X-Linked-Size for LFS)
  GET  /{repo}/resolve/{rev}/{file}                    the bytes; `Range: bytes=N-` answers 206
  404s carry X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound, as the hub's do.
  GET  /_health, GET /_requests (every request so far: method, path, range, authorization)

Faults: --rate sends file bytes at most this fast; --cut-after N closes the connection after N bytes of
the first whole-file GET of each LFS file (Content-Length promised the whole file); --corrupt FILE flips
one byte in the middle of FILE as served (its listed sha256 stays the true one)."""
import argparse
import hashlib
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_MIN = 10_000
CHUNK = 64 * 1024


class Blob:
    def __init__(self, spec):
        self.path = spec if isinstance(spec, str) else None
        self.zeros = None if self.path else spec.get("zeros")
        self.data = None if self.path or self.zeros else spec["text"].encode("utf-8")
        self.size = os.path.getsize(self.path) if self.path else self.zeros or len(self.data)
        self.lfs = self.size > LFS_MIN or (self.path or "").endswith((".gguf", ".safetensors"))
        if self.zeros:
            self.digest = "0" * 64
            return
        h = hashlib.sha256() if self.lfs else hashlib.sha1(b"blob %d\0" % self.size)
        for chunk in self.chunks(0):
            h.update(chunk)
        self.digest = h.hexdigest()  # the LFS sha256, or the git blob id

    def chunks(self, start):
        if self.zeros:
            for at in range(start, self.size, CHUNK):
                yield bytes(min(CHUNK, self.size - at))
            return
        if self.data is not None:
            yield self.data[start:]
            return
        with open(self.path, "rb") as f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                yield chunk

    def sibling(self, name):
        out = {"rfilename": name, "size": self.size, "blobId": hashlib.sha1(name.encode()).hexdigest()}
        if self.lfs:
            out["lfs"] = {"size": self.size, "sha256": self.digest, "pointerSize": 134}
        else:
            out["blobId"] = self.digest
        return out


class Hub:
    def __init__(self, repos, args):
        self.repos = {repo: {rev: {name: Blob(spec) for name, spec in files.items()} for rev, files in revs.items()}
                      for repo, revs in repos.items()}
        self.args, self.requests, self.cut_done, self.lock = args, [], set(), threading.Lock()

    @staticmethod
    def commit(repo, rev):
        return hashlib.sha1(f"{repo}@{rev}".encode()).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub = None

    def log_message(self, *args):
        pass

    def _json(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _not_found(self, code, commit=None):
        headers = {"X-Error-Code": code, "X-Error-Message": f"{code} (fake hub)"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._json(404, {"error": code}, headers)

    def _record(self):
        with self.hub.lock:
            self.hub.requests.append({"method": self.command, "path": self.path, "range": self.headers.get("Range"),
                                      "authorization": self.headers.get("Authorization")})

    def do_GET(self):
        self._record()
        path = urlsplit(self.path).path
        if path == "/_health":
            return self._json(200, {"ok": True})
        if path == "/_requests":
            with self.hub.lock:
                return self._json(200, list(self.hub.requests))
        if path.startswith("/api/models/"):
            return self._api(path[len("/api/models/"):])
        return self._resolve(path)

    def do_HEAD(self):
        self._record()
        return self._resolve(urlsplit(self.path).path)

    def _api(self, rest):
        parts = rest.split("/")
        repo = "/".join(parts[:2])
        revs = self.hub.repos.get(repo)
        if revs is None:
            return self._not_found("RepoNotFound")
        if parts[2:] == ["refs"]:
            branches = [{"name": r, "ref": f"refs/heads/{r}", "targetCommit": Hub.commit(repo, r)} for r in revs]
            return self._json(200, {"branches": branches, "tags": [], "converts": []})
        rev = unquote(parts[3]) if len(parts) > 3 and parts[2] == "revision" else "main"
        if rev not in revs:
            return self._not_found("RevisionNotFound")
        siblings = [blob.sibling(name) for name, blob in sorted(revs[rev].items())]
        self._json(200, {"id": repo, "modelId": repo, "sha": Hub.commit(repo, rev), "private": False,
                         "siblings": siblings})

    def _resolve(self, path):
        owner, name, kind, rest = (path.lstrip("/").split("/", 3) + ["", "", "", ""])[:4]
        repo, (rev, _, filename) = f"{owner}/{name}", unquote(rest).partition("/")
        revs = self.hub.repos.get(repo)
        if kind != "resolve" or revs is None:
            return self._not_found("RepoNotFound")
        if rev not in revs:
            return self._not_found("RevisionNotFound")
        commit = Hub.commit(repo, rev)
        blob = revs[rev].get(filename)
        if blob is None:
            return self._not_found("EntryNotFound", commit)
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and self.command == "GET":
            start = int(rng[6:].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{blob.digest}"')
        self.send_header("Accept-Ranges", "bytes")
        if blob.lfs:
            self.send_header("X-Linked-Etag", f'"{blob.digest}"')
            self.send_header("X-Linked-Size", str(blob.size))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{blob.size - 1}/{blob.size}")
        self.send_header("Content-Length", str(blob.size - start))
        self.end_headers()
        if self.command == "GET":
            self._send_bytes(blob, filename, start)

    def _send_bytes(self, blob, filename, start):
        args, sent, t0 = self.hub.args, 0, time.monotonic()
        cut = None
        if args.cut_after and blob.lfs and start == 0:
            with self.hub.lock:
                if filename not in self.hub.cut_done:
                    self.hub.cut_done.add(filename)
                    cut = args.cut_after
        flip = blob.size // 2 if filename == args.corrupt else None
        pos = start
        for chunk in blob.chunks(start):
            if flip is not None and pos <= flip < pos + len(chunk):
                chunk = chunk[:flip - pos] + bytes([chunk[flip - pos] ^ 0xFF]) + chunk[flip - pos + 1:]
            if cut is not None and sent + len(chunk) >= cut:
                self.wfile.write(chunk[:cut - sent])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
                self.close_connection = True
                return
            self.wfile.write(chunk)
            sent += len(chunk)
            pos += len(chunk)
            if args.rate:
                ahead = sent / args.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)


def main():
    p = argparse.ArgumentParser(description="A fake Hugging Face Hub for tests.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--repos", required=True, help="JSON file: {repo: {branch: {file: path | {text}}}}")
    p.add_argument("--rate", type=float, default=0, help="bytes per second a file is sent at (0: no limit)")
    p.add_argument("--cut-after", type=int, default=0, help="drop the first GET of each LFS file after N bytes")
    p.add_argument("--corrupt", default=None, help="a file name served with one byte flipped")
    args = p.parse_args()
    with open(args.repos, encoding="utf-8") as f:
        Handler.hub = Hub(json.load(f), args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
