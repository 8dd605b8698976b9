"""The gateway's client for the local Qwen server (or any OpenAI-compatible server:
vLLM, TabbyAPI...). Same shape as gigachat_client: complete() and stream()."""
import json
import threading
import time

import requests

from api_common import ApiError

STATUS_TTL = 30  # seconds to trust a cached /status (the context size rarely changes)


class QwenProvider:
    name = "qwen"

    def __init__(self, base_url, timeout=300.0, connect_timeout=3.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, timeout)
        self.local = threading.local()  # one keep-alive session per thread
        self._status, self._status_at = None, 0.0

    def _session(self):
        s = getattr(self.local, "session", None)
        if s is None:
            s = self.local.session = requests.Session()
            s.trust_env = False  # a local server: never route it through an HTTP proxy from the environment
        return s

    def _request(self, method, path, body=None, stream=False, timeout=None):
        url = self.base_url + path
        try:
            r = self._session().request(method, url, json=body, stream=stream, timeout=timeout or self.timeout)
        except requests.Timeout:
            raise ApiError(504, f"The Qwen server at {self.base_url} did not answer in time: check that it is "
                                f"not overloaded, or raise QWEN_TIMEOUT in .env.",
                           type="upstream_timeout", code="qwen_timeout")
        except requests.ConnectionError:
            raise ApiError(503, f"The Qwen server is not reachable at {self.base_url}: start it with "
                                f"`python qwen_server.py -m MODEL_DIR`, or fix QWEN_URL in .env.",
                           type="upstream_unavailable", code="qwen_unreachable")
        if r.status_code >= 400:
            try:
                err = r.json().get("error") or {}
                msg, code = err.get("message") or r.text[:300], err.get("code")
            except ValueError:
                msg, code = r.text[:300], None
            finally:
                r.close()
            if r.status_code < 500:  # the client's mistake (e.g. context too long): pass it on as is
                raise ApiError(r.status_code, f"Qwen server: {msg}", code=code or "qwen_rejected")
            raise ApiError(502, f"The Qwen server failed ({r.status_code}): {msg}", type="upstream_error",
                           code=code or "qwen_error")
        return r

    @staticmethod
    def _body(messages, params, stream):
        body = {"model": "qwen", "messages": messages, "stream": stream}
        body.update({k: v for k, v in params.items() if v is not None and v != []})
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def complete(self, messages, params, session_id=None):
        data = self._request("POST", "/v1/chat/completions", self._body(messages, params, False)).json()
        choice = data["choices"][0]
        return {"answer": choice["message"]["content"] or "", "finish_reason": choice.get("finish_reason"),
                "usage": data.get("usage") or {}, "model": data.get("model"), "blocked": False}

    def stream(self, messages, params, session_id=None):
        """Yields {"delta": text}..., then {"finish_reason", "usage", "model", "blocked"}."""
        r = self._request("POST", "/v1/chat/completions", self._body(messages, params, True), stream=True)
        final = {"finish_reason": None, "usage": {}, "model": None, "blocked": False}
        done = False
        try:
            for line in r.iter_lines(chunk_size=None):  # chunk_size=None: hand over each event as it arrives
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True
                    break
                obj = json.loads(line[6:])
                if "error" in obj:
                    err = obj["error"]
                    raise ApiError(502, f"The Qwen server failed mid-answer: {err.get('message')}",
                                   type="upstream_error", code=err.get("code") or "qwen_error")
                final["model"] = obj.get("model") or final["model"]
                final["usage"] = obj.get("usage") or final["usage"]
                for choice in obj.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield {"delta": text}
                    final["finish_reason"] = choice.get("finish_reason") or final["finish_reason"]
        except requests.Timeout:
            raise ApiError(504, f"The Qwen server at {self.base_url} stopped sending mid-answer: raise "
                                f"QWEN_TIMEOUT in .env or check the server.", type="upstream_timeout",
                           code="qwen_timeout")
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            pass  # reported below as a broken stream
        finally:
            r.close()  # closing our side makes qwen_server cancel the generation
        if not done:
            raise ApiError(502, f"The Qwen server at {self.base_url} closed the stream before the end "
                                f"(did it stop or crash?). The partial answer was saved.",
                           type="upstream_error", code="qwen_stream_broken")
        yield final

    def status(self) -> dict:
        """The server's /status plus reachability; never raises."""
        t0 = time.perf_counter()
        try:
            st = self._request("GET", "/status", timeout=(2.0, 5.0)).json()
        except ApiError as e:
            models = self.models() if e.status == 404 else []  # another OpenAI-compatible server (vLLM...)
            if models:
                return {"online": True, "url": self.base_url, "model": models[0], "max_seq_len": None}
            return {"online": False, "url": self.base_url, "reason": e.message}
        except ValueError:
            return {"online": False, "url": self.base_url, "reason": "the server at QWEN_URL did not answer JSON"}
        st.update(online=True, url=self.base_url, gateway_rtt_ms=round((time.perf_counter() - t0) * 1000, 2))
        self._status, self._status_at = st, time.monotonic()
        return st

    def max_seq_len(self):
        if self._status is None or time.monotonic() - self._status_at > STATUS_TTL:
            self.status()
        return (self._status or {}).get("max_seq_len")

    def count_tokens(self, messages) -> int:
        return self._request("POST", "/v1/token/count", {"messages": messages}).json()["count"]

    def models(self):
        try:
            return [m["id"] for m in self._request("GET", "/v1/models", timeout=(2.0, 5.0)).json()["data"]]
        except (ApiError, ValueError, KeyError):
            return []
