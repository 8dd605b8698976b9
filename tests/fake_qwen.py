"""A fake Qwen server (the OpenAI-compatible endpoints the gateway calls) that holds answers as long
as a test asks and records when the gateway hangs up on it, so that tests can catch a request at a
chosen moment: before its first token, mid-answer, or during a whole (non-streamed) answer.

Answers echo the last user message, "Эхо: <text>", word by word. In that message:
  [[hold=S]]  wait S seconds before the first word (streams send their headers at once, as qwen_server does)
  [[gap=S]]   wait S seconds between words
  [[cut=N]]   (streams) drop the connection after N words, without an ending
Server knobs (attributes): `model_id` (what /status and /v1/models name), `fail_status` (answer every
chat request with that 5xx status while set), `serial` (answer one request at a time, like a GPU
engine; the others wait and /status reports them as queue_length).
Hostile replies: `replies[path] = (status, content_type, body bytes)` answers that path (GET /status,
GET /v1/models, POST /v1/chat/completions...) with exactly that instead; `stream_script` (a list of
payloads, objects or raw strings) is what a streamed chat answer sends, as `data:` events, then [DONE].
Every request is recorded (`server.requests`: its messages and stream flag), and a connection the
gateway closes while an answer is held or streamed is recorded in `server.hangups` (text, time).
Runs in a thread of the test process: start() returns the server, its base_url and stop()."""
import json
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROL = re.compile(r"\[\[(hold|gap|cut)=([0-9.]+)\]\]")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _json(self, obj, status=200):
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _raw(self):
        """Sends the hostile reply set for this path, if any; True when it did."""
        reply = self.server.replies.get(self.path)
        if reply is None:
            return False
        status, ctype, data = reply
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    def do_GET(self):
        if self._raw():
            return
        if self.path == "/status":
            return self._json({"model": self.server.model_id, "max_seq_len": 1_000_000, "online": True,
                               "queue_length": self.server.waiting})
        if self.path == "/v1/models":
            return self._json({"object": "list", "data": [{"id": self.server.model_id, "object": "model"}]})
        self._json({"error": {"message": "no such endpoint"}}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.path == "/v1/token/count":
            return self._json({"count": 1})
        messages = body["messages"]
        with self.server.lock:
            self.server.requests.append({"messages": messages, "stream": bool(body.get("stream")),
                                         "model": body.get("model")})
        if self._raw():
            return
        if body.get("stream") and self.server.stream_script is not None:
            return self._script(self.server.stream_script)
        if self.server.fail_status:
            return self._json({"error": {"message": "fake failure", "code": "fake"}}, self.server.fail_status)
        if self.server.serial:
            with self.server.lock:
                self.server.waiting += 1
            with self.server.one_at_a_time:
                with self.server.lock:
                    self.server.waiting -= 1
                return self._answer(body, messages)
        self._answer(body, messages)

    def _answer(self, body, messages):
        text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        knobs = {k: float(v) for k, v in CONTROL.findall(text)}
        words = ("Эхо: " + CONTROL.sub("", text).strip()).split(" ")
        if body.get("stream"):
            return self._stream(text, words, knobs)
        if self._wait(knobs.get("hold", 0), text):
            self._json({"id": "x", "object": "chat.completion", "model": "qwen-fake", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": len(words) + 1}})

    def _stream(self, text, words, knobs):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        if not self._wait(knobs.get("hold", 0), text):
            return
        for i, word in enumerate(words):
            if i == knobs.get("cut"):
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._event({"choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}}]})
            if not self._wait(knobs.get("gap", 0), text):
                return
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self._event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": len(words)}})
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _script(self, payloads):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for obj in payloads:
            self._event(obj)
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _event(self, obj):
        data = b"data: " + (obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)).encode() + b"\n\n"
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        except OSError:
            pass  # noticed by the next _wait

    def _wait(self, seconds, text) -> bool:
        """Sleeps, watching the connection; False (and recorded) if the gateway hung up."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            ready = select.select([self.connection], [], [], max(0.0, left))[0]
            if ready:
                try:
                    gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    gone = True
                if gone:
                    with self.server.lock:
                        self.server.hangups.append((text, time.monotonic()))
                    self.close_connection = True
                    return False
                time.sleep(min(0.01, max(left, 0)))
            if left <= 0:
                return True


def start(port=0, model_id="qwen-fake", serial=False):
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.lock, server.requests, server.hangups = threading.Lock(), [], []
    server.model_id, server.fail_status, server.serial = model_id, None, serial
    server.replies, server.stream_script = {}, None
    server.one_at_a_time, server.waiting = threading.Lock(), 0
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True, name="fake-qwen").start()

    def stop():
        server.shutdown()
        server.server_close()
    server.stop = stop
    return server


if __name__ == "__main__":  # a fake upstream in its own process (to be killed): --port N [--serial]
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--serial", action="store_true")
    args = ap.parse_args()
    start(args.port, serial=args.serial)
    threading.Event().wait()
