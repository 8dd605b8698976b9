"""The gateway's client for the local Qwen server (or any OpenAI-compatible server:
vLLM, TabbyAPI...). Same shape as gigachat_client: complete() and stream()."""
import json
import time

import urllib3

# UpstreamTimeout: urllib3's TimeoutError, not the builtin of that name
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, TimeoutError as UpstreamTimeout

import providers.openai_reply as openai_reply  # (the modules, not the package face: no arrow back up)
import providers.usage_count as usage_count
from common.api_common import ApiError
from providers.base import Provider
from providers.upstream_abort import abortable, aborting, request_sent

STATUS_TTL = 30  # seconds to trust a cached /status (the context size rarely changes)
STATUS_TIMEOUT = urllib3.Timeout(connect=2.0, read=5.0)
POOL_SIZE = 32  # idle keep-alive connections kept: the gateway's threads per process


class QwenProvider(Provider):
    name = "qwen"

    def __init__(self, base_url, timeout=300.0, connect_timeout=3.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=timeout)
        # urllib3's pool directly, not requests: a third of a millisecond less a call on this path.
        # Thread-safe; never reads proxy settings from the environment (a local server); no retries.
        self.pool = urllib3.connection_from_url(self.base_url, maxsize=POOL_SIZE, block=False, retries=False)
        self.pool.ConnectionCls = abortable(self.pool.ConnectionCls)
        self.prefix = urllib3.util.parse_url(self.base_url).path or ""
        self._status, self._status_at = None, 0.0
        self._no_counter = set()  # token-count endpoints this upstream does not have (404)

    def _request(self, method, path, body=None, stream=False, timeout=None, abort=None):
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        token = request_sent.set(abort.sent if abort else None)
        try:
            r = self.pool.urlopen(method, self.prefix + path, body=data, preload_content=not stream,
                                  headers={"Content-Type": "application/json"} if data else None,
                                  timeout=timeout or self.timeout)
        except NewConnectionError:  # (a subclass of UpstreamTimeout)
            raise _unreachable(self.base_url)
        except UpstreamTimeout:
            raise ApiError(504, f"The Qwen server at {self.base_url} did not answer in time: check that it is "
                                f"not overloaded, or raise QWEN_TIMEOUT in .env.",
                           type="upstream_timeout", code="qwen_timeout")
        except ProtocolError:  # it took the request, then closed or reset the connection without an answer
            raise _closed(self.base_url)
        except HTTPError as e:
            raise ApiError(502, f"The Qwen server at {self.base_url} failed: {e}", type="upstream_error",
                           code="qwen_error")
        finally:
            request_sent.reset(token)
        if r.status >= 400:
            try:
                text = r.data.decode("utf-8", "replace")  # (a streamed error body is read here too)
            except (HTTPError, OSError):
                text = ""
            finally:
                r.release_conn()
            err = _error_fields(text)
            if r.status < 500:  # the client's mistake (e.g. context too long): passed on unchanged, no retry
                raise ApiError(r.status, err["message"], type=err["type"], code=err["code"] or "qwen_rejected",
                               param=err["param"])
            raise ApiError(502, f"The Qwen server failed ({r.status}): {err['message']}", type="upstream_error",
                           code=err["code"] or "qwen_error")
        return r

    def _json(self, method, path, body=None, timeout=None, abort=None):
        r = self._request(method, path, body, timeout=timeout, abort=abort)
        try:
            return json.loads(r.data)
        except ValueError:  # an HTML error page from a proxy, a port that is not a Qwen server...
            raise self._odd(f"{path} answered {r.status} with a body that is not JSON "
                            f"({r.data[:60].decode('utf-8', 'replace')!r})") from None

    def _odd(self, what):
        """The 502 for an answer of the wrong shape (openai_reply.OddReply): the upstream's fault."""
        return ApiError(502, f"The server at {self.base_url} gave an answer the gateway cannot use: {what}. Check "
                             f"that QWEN_URL points to a Qwen server (or another OpenAI-compatible one).",
                        type="upstream_error", code="qwen_bad_answer")

    @staticmethod
    def _body(request, stream):
        """(path, body): a chat, or with request.completion (prompt, suffix...) a text completion."""
        text = request.completion
        body = dict(text) if text else {"messages": [_wire(m) for m in request.messages]}
        body.update(model=request.model or "qwen", stream=stream)
        body.update({k: v for k, v in request.sampling.items() if v is not None and v != []})
        body.update(request.shaping)  # tools, response_format, logprobs...: passed on as sent
        if stream:
            body["stream_options"] = {"include_usage": True}
        return ("/v1/completions" if text else "/v1/chat/completions"), body

    def complete(self, request, session_id=None, cancel=None):
        with aborting(cancel) as abort:
            data = self._json("POST", *self._body(request, False), abort=abort)
        try:
            checked = openai_reply.completion(data)
        except openai_reply.OddReply as e:
            raise self._odd(str(e)) from None
        choice, message, logprobs = checked["choice"], checked["message"], checked["choice"].get("logprobs")
        answer = choice["text"] if "text" in choice else message.get("content") or ""
        usage = usage_count.filled(self, data.get("usage"), request,
                                   [{"delta": answer, "tool_calls": message.get("tool_calls")}])
        return {"answer": answer, "finish_reason": choice.get("finish_reason"), "usage": usage,
                "model": data.get("model"), "blocked": False, "tool_calls": message.get("tool_calls"),
                "logprobs": logprobs.get("content") if logprobs and "message" in choice else logprobs}

    def stream(self, request, session_id=None, cancel=None):
        """Yields {"delta": text}..., then {"finish_reason", "usage", "model", "blocked"}."""
        with aborting(cancel) as abort:
            r = self._request("POST", *self._body(request, True), stream=True, abort=abort)
            kind = r.headers.get("Content-Type", "")
            if not kind.startswith("text/event-stream"):
                r.close()
                r.release_conn()
                raise self._odd(f"a stream came as {kind[:60] or 'no content type'!r}, not text/event-stream")
            pieces = []
            for ev in self._events(r):
                if "usage" in ev:  # the last one
                    ev["usage"] = usage_count.filled(self, ev["usage"], request, pieces)
                else:
                    pieces.append(ev)
                yield ev

    def _events(self, r):
        final = {"finish_reason": None, "usage": {}, "model": None, "blocked": False}
        done = False
        try:
            for line in _lines(r):
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True
                    break
                obj = self._chunk(line[6:])
                if "error" in obj:
                    err = obj["error"]
                    raise ApiError(502, f"The Qwen server failed mid-answer: {err.get('message')}",
                                   type="upstream_error", code=err.get("code") or "qwen_error")
                final["model"] = obj.get("model") or final["model"]
                final["usage"] = obj.get("usage") or final["usage"]
                for choice in obj.get("choices") or ():
                    delta = choice.get("delta") or {}
                    text = choice["text"] if "text" in choice else delta.get("content")  # (a text completion)
                    ev = {"delta": text} if text else {}
                    if delta.get("tool_calls"):
                        ev["tool_calls"] = delta["tool_calls"]
                    logprobs = choice.get("logprobs") or {}
                    if logprobs.get("content") or logprobs.get("tokens"):  # chat's, or the completions' shape
                        ev["logprobs"] = logprobs["content"] if "content" in logprobs else logprobs
                    if ev:
                        yield ev
                    final["finish_reason"] = choice.get("finish_reason") or final["finish_reason"]
        except UpstreamTimeout:
            raise ApiError(504, f"The Qwen server at {self.base_url} stopped sending mid-answer: raise "
                                f"QWEN_TIMEOUT in .env or check the server.", type="upstream_timeout",
                           code="qwen_timeout")
        except (HTTPError, OSError):
            pass  # reported below as a broken stream
        finally:
            if done:
                r.drain_conn()  # the end of the chunked body: the connection can then be reused
            else:
                r.close()  # closing our side makes qwen_server cancel the generation
            r.release_conn()
        if not done:
            raise ApiError(502, f"The Qwen server at {self.base_url} closed the connection before the end of "
                                f"the answer (did it crash? see its log). The partial answer was saved.",
                           type="upstream_error", code="qwen_stream_broken")
        yield final

    def _chunk(self, data):
        """One streamed `data:` payload, parsed and checked."""
        try:
            obj = json.loads(data)
            return obj if isinstance(obj, dict) and "error" in obj else openai_reply.stream_chunk(obj)
        except openai_reply.OddReply as e:
            raise self._odd(str(e)) from None
        except ValueError:
            raise self._odd(f"a streamed event that is not JSON ({data[:60].decode('utf-8', 'replace')!r})") from None

    def status(self) -> dict:
        """The server's /status plus reachability; never raises. A reply of the wrong shape: offline, and why."""
        t0 = time.perf_counter()
        try:
            st = openai_reply.status(self._json("GET", "/status", timeout=STATUS_TIMEOUT))
        except openai_reply.OddReply as e:
            return {"online": False, "url": self.base_url, "reason": f"odd reply: {e}"}
        except ApiError as e:
            models = self.models() if e.status == 404 else []  # another OpenAI-compatible server (vLLM...)
            if models:
                return {"online": True, "url": self.base_url, "model": models[0], "max_seq_len": None}
            return {"online": False, "url": self.base_url, "reason": e.message}
        st.update(online=True, url=self.base_url, gateway_rtt_ms=round((time.perf_counter() - t0) * 1000, 2))
        self._status, self._status_at = st, time.monotonic()
        return st

    def max_seq_len(self):
        if self._status is None or time.monotonic() - self._status_at > STATUS_TTL:
            self.status()
        return (self._status or {}).get("max_seq_len")

    def count_tokens(self, messages) -> int:
        return self._json("POST", "/v1/token/count", {"messages": messages})["count"]

    def model_ids(self):
        """/v1/models' ids; ApiError when unreachable, openai_reply.OddReply when of the wrong shape."""
        return openai_reply.model_ids(self._json("GET", "/v1/models", timeout=STATUS_TIMEOUT))

    def count_text(self, text):
        """Tokens in `text` by the upstream's tokenizer (usage_count.COUNTERS), or None if it cannot say."""
        for path, field in usage_count.COUNTERS:
            if path in self._no_counter:
                continue
            try:
                return int(self._json("POST", path, {field: text}, timeout=STATUS_TIMEOUT)["count"])
            except ApiError as e:
                if e.status not in (404, 405):  # a failure now, not a missing endpoint: asked again next time
                    return None
                self._no_counter.add(path)
            except (KeyError, ValueError, TypeError):
                self._no_counter.add(path)
        return None

    def count_prompt(self, request):
        """The chat prompt's tokens, template included, where the upstream counts them (qwen_server)."""
        if request.completion or "/v1/token/count" in self._no_counter:
            return None
        try:
            return int(self.count_tokens(request.messages))
        except ApiError as e:
            if e.status in (404, 405):
                self._no_counter.add("/v1/token/count")
            return None
        except (KeyError, ValueError, TypeError):
            return None

    def models(self):
        try:
            return self.model_ids()
        except (ApiError, ValueError):
            return []


def _wire(message):
    """A parsed message back in OpenAI's wire shape: tool call arguments as a JSON string."""
    if not message.get("tool_calls"):
        return message
    calls = [dict(c, function=dict(c["function"], arguments=c["function"]["arguments"]
                                   if isinstance(c["function"]["arguments"], str)
                                   else json.dumps(c["function"]["arguments"], ensure_ascii=False)))
             for c in message["tool_calls"]]
    return dict(message, tool_calls=calls)


def _closed(base_url):
    return ApiError(502, f"The Qwen server at {base_url} closed the connection (did it crash? see its log).",
                    type="upstream_error", code="qwen_connection_closed")


def _error_fields(text) -> dict:
    """An upstream's {"error": {...}} body as strings (an odd one: its text as the message)."""
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        err = None
    err = err if isinstance(err, dict) else {}
    out = {k: err.get(k) if isinstance(err.get(k), str) and err.get(k) else None
           for k in ("message", "type", "code", "param")}
    out["message"] = out["message"] or text[:300] or "no details"
    out["type"] = out["type"] or "invalid_request_error"
    return out


def _unreachable(base_url):
    """Only for a connection that could not be made (refused, no such host): the server is not running there."""
    return ApiError(503, f"The Qwen server is not reachable at {base_url}: start it with "
                         f"`python qwen_server.py -m MODEL` (`make start` runs the demo model and the gateway), "
                         f"or fix QWEN_URL in .env.",
                    type="upstream_unavailable", code="qwen_unreachable")


def _lines(resp):
    """The lines of a streamed body, each handed over as soon as it has arrived."""
    buf = b""
    while True:
        data = resp.read1(65536)  # whatever has arrived (waits for at least one byte); b"" at the end
        if not data:
            break
        *lines, buf = (buf + data).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
    if buf:
        yield buf
