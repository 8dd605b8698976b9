#!/usr/bin/env python3
"""A fake GigaChat API for tests, speaking the wire format the official `gigachat`
SDK (0.2.x) sends and parses, so tests can drive the real SDK without the internet.

    python tests/fake_gigachat.py --port 8765 [--token-ttl S] [--credentials KEY]

Endpoints (any base prefix works; tests use /api/v1 and /api/v2/oauth):
  POST .../oauth             form `scope=...`, headers `Authorization: Basic <key>` and `RqUID`
                             -> {"access_token", "expires_at" (ms)}
  POST .../chat/completions  v1 chat, plain JSON or SSE (`"stream": true`)
  GET  .../models            {"object": "list", "data": [{"id", "object", "owned_by", "type"}]}
  GET  /_health              readiness probe
  GET  /_debug/last_request  the last chat request: {"path", "headers", "body"}
  GET  /_debug/requests      the last 100 chat requests
  GET  /_debug/stats         counters (auth_calls, chat_calls, max_active, expired_rejections, ...)
  POST /_control             {"next": ["401", "slow=1,429"]}: faults for the next chat requests, one
                             entry each; {"expire_tokens": true}; {"token_ttl": S}; {"reset": true}

Answers echo the last user message: "Эхо: <text>", streamed word by word.

Functions (`functions`, `function_call`, as the SDK sends them): a named `function_call` {"name"} is
called; with "auto" (or none given), the first function whose name is in the last user message is
called, when the conversation ends with that user message. A call's arguments fill each parameter of the function's schema: strings with the user's text,
numbers with its length in words, booleans true, arrays [], objects {}. GigaChat's own shape: content "",
`function_call` {"name", "arguments": {...}}, `functions_state_id`, finish_reason "function_call" (in one
chunk when streamed). After a `function` message the answer echoes its content: "Эхо: <result>".

Faults, per request, written anywhere in the last user message (they are cut from the echo):
  [[fault:N]]            answer HTTP status N with {"status": N, "message": ...} (401, 402, 404, 422, 500, ...)
  [[fault:429=S]]        429 with `Retry-After: S` (default 3; S=none sends no header)
  [[fault:blacklist]]    canned answer with finish_reason "blacklist"
  [[fault:slow=S]]       sleep S seconds before answering
  [[fault:sleepstream=S]] sleep S seconds between stream chunks
  [[fault:drop=N]]       stream: send N chunks (default 2) then cut the connection mid-body;
                         plain request: close the connection without an answer
  [[fault:nousage]]      stream: no usage in the last chunk
  [[fault:meta]]         append "[messages=N system_first=yes|no session=ID]" to the answer
A persistent [[fault:401]] defeats the SDK's refresh-and-retry; a queued "401" (POST /_control)
hits only the first attempt, so the refresh is transparent.
"""
import argparse
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MODELS = [("GigaChat", "chat"), ("GigaChat-Pro", "chat"), ("GigaChat-Max", "chat"), ("GigaChat-2", "chat"),
          ("GigaChat-2-Pro", "chat"), ("GigaChat-2-Max", "chat"), ("Embeddings", "embedder")]
CHAT_MODELS = {name for name, kind in MODELS if kind == "chat"}
MODEL_VERSION = "2.0.28.2"  # GigaChat reports "<model>:<version>" in answers
SCOPES = ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP")
BLACKLIST_ANSWER = "Не люблю менять тему разговора, но вот сейчас тот самый случай."
FAULT_RE = re.compile(r"\[\[fault:([^\]]*)\]\]")
STATS = ("auth_calls", "auth_failures", "chat_calls", "stream_calls", "models_calls", "expired_rejections",
         "unauthorized", "active", "max_active")


def parse_faults(spec):
    """'slow=1,429=2' -> {"slow": "1", "429": "2"}."""
    faults = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        faults[name.strip()] = value.strip() or None
    return faults


def count_tokens(text):
    return len(text.split())


class State:
    def __init__(self, credentials, scope, token_ttl, reported_ttl):
        self.lock = threading.Lock()
        self.credentials, self.scope = credentials, scope
        self.token_ttl, self.reported_ttl = token_ttl, reported_ttl
        self.tokens = {}  # token -> real expiry (time.time())
        self.reset()

    def reset(self):
        self.sessions = {}  # X-Session-ID -> prompt tokens of its previous request
        self.queued = []  # fault specs for the next chat requests
        self.requests = []
        self.stats = dict.fromkeys(STATS, 0)

    def bump(self, key, n=1):
        with self.lock:
            self.stats[key] += n
            if key == "active":
                self.stats["max_active"] = max(self.stats["max_active"], self.stats["active"])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the SDK's httpx expects
    server_version = "FakeGigaChat/1.0"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

    @property
    def state(self) -> State:
        return self.server.state

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    # ---- plumbing -------------------------------------------------------------------------
    def _send_json(self, status, obj, headers=None):
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status, message, headers=None):
        self._send_json(status, {"status": status, "message": message}, headers)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _drop(self):
        """Cut the connection like a crashed proxy: no terminating chunk, no answer."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    # ---- routing --------------------------------------------------------------------------
    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/_health":
            return self._send_json(200, {"status": "ok"})
        if path == "/_debug/stats":
            with self.state.lock:
                return self._send_json(200, dict(self.state.stats))
        if path == "/_debug/last_request":
            with self.state.lock:
                last = self.state.requests[-1] if self.state.requests else None
            return self._send_json(200 if last else 404, last or {"status": 404, "message": "no chat request yet"})
        if path == "/_debug/requests":
            with self.state.lock:
                return self._send_json(200, list(self.state.requests))
        if path.endswith("/models"):
            self.state.bump("models_calls")
            if self._authorized():
                self._send_json(200, {"object": "list", "data": [
                    {"id": n, "object": "model", "owned_by": "salutedevices", "type": t} for n, t in MODELS]})
            return
        self._error(404, f"No such endpoint: {path}")

    def do_POST(self):
        path = urlsplit(self.path).path
        body = self._body()
        if path == "/_control":
            return self._control(body)
        if path.endswith("/oauth"):
            return self._oauth(body)
        if path.endswith("/chat/completions") and "/v2/" not in path:
            return self._chat(path, body)
        self._error(404, f"No such endpoint: {path} (the fake serves the v1 API only)")

    def _control(self, body):
        cmd = json.loads(body or b"{}")
        with self.state.lock:
            if cmd.get("reset"):
                self.state.reset()
            if cmd.get("expire_tokens"):
                self.state.tokens = dict.fromkeys(self.state.tokens, 0.0)
            if "token_ttl" in cmd:
                self.state.token_ttl = float(cmd["token_ttl"])
            self.state.queued.extend(cmd.get("next", []))
            queued = list(self.state.queued)
        self._send_json(200, {"ok": True, "queued": queued})

    # ---- OAuth ----------------------------------------------------------------------------
    def _oauth(self, body):
        st = self.state
        st.bump("auth_calls")
        scheme, _, key = (self.headers.get("Authorization") or "").partition(" ")
        scope = (parse_qs(body.decode("utf-8")).get("scope") or [""])[0]
        if not self.headers.get("RqUID"):
            st.bump("auth_failures")
            return self._send_json(400, {"code": 5, "message": "RqUID header is required"})
        if scheme != "Basic" or key != st.credentials:
            st.bump("auth_failures")
            return self._send_json(401, {"code": 6, "message": "credentials doesn't match db data"})
        if scope != st.scope:
            st.bump("auth_failures")
            return self._send_json(400, {"code": 7, "message": "scope from db not fully includes consumed scope"})
        token, now = "fake-" + uuid.uuid4().hex, time.time()
        with st.lock:
            st.tokens[token] = now + st.token_ttl
        # expires_at is what GigaChat reports (30 min); the real lifetime is --token-ttl, so a short
        # ttl makes the SDK meet a 401 on a token it believes valid and refresh it.
        self._send_json(200, {"access_token": token, "expires_at": int((now + st.reported_ttl) * 1000)})

    def _authorized(self):
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        with self.state.lock:
            expiry = self.state.tokens.get(token) if scheme == "Bearer" else None
        if expiry is None:
            self.state.bump("unauthorized")
            self._error(401, "Unauthorized")
            return False
        if expiry <= time.time():
            self.state.bump("expired_rejections")
            self._error(401, "Token has expired")
            return False
        return True

    # ---- chat -----------------------------------------------------------------------------
    def _chat(self, path, raw):
        st = self.state
        st.bump("chat_calls")
        try:
            req = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return self._error(400, f"Invalid JSON: {e}")
        with st.lock:
            st.requests = (st.requests + [{"path": path, "headers": dict(self.headers.items()), "body": req}])[-100:]
        if not self._authorized():
            return
        if req.get("model") not in CHAT_MODELS:
            return self._error(404, "No such model")
        problem = validate(req)
        if problem:
            return self._error(422, problem)
        with st.lock:  # queued faults go to requests that pass auth and validation
            queued = parse_faults(st.queued.pop(0)) if st.queued else {}
        messages = req["messages"]
        last_user = next((m.get("content", "") for m in reversed(messages) if m["role"] == "user"), "")
        faults = {**queued}
        for spec in FAULT_RE.findall(last_user):
            faults.update(parse_faults(spec))
        text = FAULT_RE.sub("", last_user).strip()
        st.bump("active")
        try:
            self._answer(req, messages, text, faults)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout): nothing to tell it
        finally:
            st.bump("active", -1)

    def _answer(self, req, messages, text, faults):
        st = self.state
        if faults.get("slow"):
            time.sleep(float(faults["slow"]))
        for name, value in faults.items():
            if name.isdigit():
                status = int(name)
                headers = {}
                if status == 429 and value != "none":
                    headers["Retry-After"] = value or "3"
                return self._error(status, f"Injected fault {status}", headers)
        stream = bool(req.get("stream"))
        if "drop" in faults and not stream:
            return self._drop()

        call = function_to_call(req, text)
        if call is not None:
            return self._function_call(req, messages, call, stream)
        if messages[-1].get("role") == "function":
            text = messages[-1].get("content", "")
        session = self.headers.get("X-Session-ID")
        finish, answer = "stop", f"Эхо: {text}"
        if "blacklist" in faults:
            finish, answer = "blacklist", BLACKLIST_ANSWER
        if "meta" in faults:
            answer += (f" [messages={len(messages)} system_first={'yes' if messages[0]['role'] == 'system' else 'no'}"
                       f" session={session or '-'}]")
        words = re.findall(r"\s*\S+", answer)  # joined back they give the answer exactly
        if req.get("max_tokens") and len(words) > req["max_tokens"]:
            finish, words = "length", words[:req["max_tokens"]]
        prompt = sum(count_tokens(m.get("content", "")) + 1 for m in messages)
        with st.lock:
            cached = min(st.sessions.get(session, 0), prompt) if session else 0
            if session:
                st.sessions[session] = prompt
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words),
                 "precached_prompt_tokens": cached}
        model = f"{req['model']}:{MODEL_VERSION}"
        if not stream:
            return self._send_json(200, {
                "choices": [{"message": {"role": "assistant", "content": "".join(words)}, "index": 0,
                             "finish_reason": finish}],
                "created": int(time.time()), "model": model, "usage": usage, "object": "chat.completion"})
        st.bump("stream_calls")
        self._stream(words, finish, usage, model, faults)

    def _function_call(self, req, messages, call, stream):
        model = f"{req['model']}:{MODEL_VERSION}"
        prompt = sum(count_tokens(m.get("content", "")) + 1 for m in messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5,
                 "precached_prompt_tokens": 0}
        message = {"role": "assistant", "content": "", "function_call": call,
                   "functions_state_id": str(uuid.uuid4())}
        if not stream:
            choice = {"message": message, "index": 0, "finish_reason": "function_call"}
            return self._send_json(200, {"choices": [choice],
                                         "created": int(time.time()), "model": model, "usage": usage,
                                         "object": "chat.completion"})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = {"choices": [{"delta": message, "index": 0, "finish_reason": "function_call"}],
                 "created": int(time.time()), "model": model, "object": "chat.completion", "usage": usage}
        self._write_chunk(b"data: " + json.dumps(chunk, ensure_ascii=False).encode("utf-8") + b"\n\n")
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _stream(self, words, finish, usage, model, faults):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        drop_after = int(faults.get("drop") or 2) if "drop" in faults else None
        pause = float(faults.get("sleepstream") or 0)
        words = words or [""]
        for i, word in enumerate(words):
            if drop_after is not None and i >= drop_after:
                return self._drop()
            if i and pause:
                time.sleep(pause)
            delta = {"content": word}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {"choices": [{"delta": delta, "index": 0}], "created": int(time.time()), "model": model,
                     "object": "chat.completion"}
            if i == len(words) - 1:  # GigaChat sends the last words together with finish_reason and usage
                chunk["choices"][0]["finish_reason"] = finish
                if "nousage" not in faults:
                    chunk["usage"] = usage
            self._write_chunk(b"data: " + json.dumps(chunk, ensure_ascii=False).encode("utf-8") + b"\n\n")
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")


def function_to_call(req, text):
    """{"name", "arguments"} when this request gets a function call (see the module doc), else None."""
    functions, choice = req.get("functions") or [], req.get("function_call")
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict):
        chosen = next((f for f in functions if f["name"] == choice.get("name")), None)
    elif req["messages"][-1].get("role") != "user":  # after a function's result: the answer, in text
        return None
    else:
        chosen = next((f for f in functions if f["name"] in text), None)
    if chosen is None:
        return None
    sample = {"string": text, "integer": len(text.split()), "number": len(text.split()), "boolean": True,
              "array": [], "object": {}}
    props = (chosen.get("parameters") or {}).get("properties") or {}
    return {"name": chosen["name"], "arguments": {k: sample.get(p.get("type"), text) for k, p in props.items()}}


def validate(req):
    """GigaChat's 422s: what the real API refuses."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        return "Invalid params: messages must not be empty"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "function"):
            return f"Invalid params: messages[{i}].role is invalid"
        if m["role"] == "system" and i != 0:
            return "Invalid params: system message must be the first and the only one"
        if m["role"] == "function" and not (i and messages[i - 1].get("function_call") and m.get("name")):
            return f"Invalid params: messages[{i}]: a function result must follow the assistant's function_call"
        if m["role"] == "function":
            try:
                json.loads(m.get("content", ""))
            except ValueError:
                return f"Invalid params: messages[{i}].content must be JSON"
    t = req.get("temperature")
    if t is not None and not t > 0:
        return "Invalid params: temperature must be in range (0, +inf)"
    p = req.get("top_p")
    if p is not None and not 0 <= p <= 1:
        return "Invalid params: top_p must be in range [0, 1]"
    if req.get("max_tokens") is not None and req["max_tokens"] < 1:
        return "Invalid params: max_tokens must be positive"
    return None


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # load tests open many connections at once
    tls = None

    def finish_request(self, request, client_address):
        if self.tls:  # handshake in the worker thread, so a failing client blocks nobody
            request = self.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free one (printed in the ready line)")
    ap.add_argument("--credentials", default=os.environ.get("FAKE_GIGACHAT_CREDENTIALS", "good-key"))
    ap.add_argument("--scope", default="GIGACHAT_API_PERS", choices=SCOPES)
    ap.add_argument("--token-ttl", type=float, default=1800.0, help="real token lifetime, seconds")
    ap.add_argument("--reported-ttl", type=float, default=1800.0, help="lifetime announced in expires_at")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    server = Server((args.host, args.port), Handler)
    server.state = State(args.credentials, args.scope, args.token_ttl, args.reported_ttl)
    server.verbose = args.verbose
    scheme = "http"
    if args.tls_cert:
        server.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.tls.load_cert_chain(args.tls_cert, args.tls_key)
        scheme = "https"
    print(f"ready {scheme}://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
