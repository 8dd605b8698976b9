"""Local Qwen 2.5 Coder server: an OpenAI-compatible Flask API over an exllamav2 (GPU), llama.cpp
(CPU, GGUF) or transformers (CPU/GPU) engine, streaming token by token.

    python qwen_server.py -m /models/Qwen2.5-Coder-7B-Instruct -cache q4 -l 16384
"""
import argparse
import logging
import os
import sys
import threading
import time

from flask import Flask, jsonify, request

import completions
from common import client_watch, openapi
from common.api_common import (LOOPBACK_NAMES, ApiError, Metrics, allowed_host_names, endpoint_list, install_common,
                               json_body, load_env, setup_logging, sse, sse_response, warn_if_exposed)
from common.openai_format import (chunk, completion, new_id, parse_chat_request, parse_messages, usage_with_timings)
from common.wsgi_server import StartupError, serve
from engines import CACHE_MODES, ENGINES, EngineError, GenParams, create_engine
from tool_calls import collect, deltas, parse_shaping

log = logging.getLogger("qwen_server")
SEED_DEFAULTS = {"temperature": 0.4, "top_p": 0.9, "top_k": 60, "repetition_penalty": 1.1}


class Stats:
    """What /status reports about traffic since start-up."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.requests = self.tokens = self.active = 0
        self.decode_ms = 0.0
        self.last_tps = None

    def busy(self, delta):
        with self.lock:
            self.active += delta

    def record(self, usage):
        with self.lock:
            self.requests += 1
            self.tokens += usage["completion_tokens"]
            self.decode_ms += usage["timings"]["decode_ms"] or 0
            self.last_tps = usage["timings"]["tokens_per_second"]

    def snapshot(self):
        with self.lock:
            return {"requests_served": self.requests, "tokens_generated": self.tokens,
                    "average_tokens_per_second": round(self.tokens / self.decode_ms * 1000, 2)
                    if self.decode_ms else None,
                    "last_tokens_per_second": self.last_tps, "active_requests": self.active,
                    "uptime_seconds": round(time.time() - self.started, 1)}


def create_app(engine, max_tokens_default=2048, allowed_hosts=LOOPBACK_NAMES):
    app = Flask(__name__)
    metrics = Metrics("qwen")
    install_common(app, metrics, "qwen_server", allowed_hosts, "QWEN_ALLOWED_HOSTS")
    openapi.register(app, openapi.qwen_server_spec)  # GET /openapi.json
    stats = Stats()

    def budget(messages, max_tokens, tools=None, prompt=None):
        """Prompt tokens and the max_tokens that fits the context, or a 400 with the counts."""
        prompt = engine.count_tokens(messages, tools) if prompt is None else prompt
        room = engine.max_seq_len - prompt
        if max_tokens is None:  # no answer runs to the end of the context unasked
            max_tokens = max(1, min(max_tokens_default, room))
        if room < 1 or max_tokens > room:
            raise ApiError(400, f"This model's context is {engine.max_seq_len} tokens: the prompt has {prompt} "
                                f"and max_tokens asks for {max_tokens}. Shorten the conversation or lower "
                                f"max_tokens.", code="context_length_exceeded", param="messages")
        return prompt, max_tokens

    @app.post("/v1/chat/completions")
    def chat_completions():
        body = json_body()
        req = parse_chat_request(body, SEED_DEFAULTS, tools_ok=True)
        shape = parse_shaping(body, engine.features)  # response_format, tools, logprobs
        params = {**req["params"], "grammar": shape["grammar"], "logprobs": shape["logprobs"],
                  "top_logprobs": shape["top_logprobs"]}
        _, params["max_tokens"] = budget(req["messages"], params.get("max_tokens"), shape["tools"])
        model, cid, cancel = engine.model_name, new_id(), threading.Event()
        chunks = engine.generate(req["messages"], GenParams(**params), cancel, tools=shape["tools"])
        if req["stream"]:
            frames = stream_chunks(deltas(chunks, shape["tool_mode"]), cid, model, req["include_usage"])
            first = chunk(cid, model, delta={"role": "assistant", "content": ""})
            return sse_response(stream_frames(frames, chunks, request.environ, cancel, first))
        stats.busy(+1)
        try:  # a client that hangs up stops its generation, or takes it out of the queue before its prefill
            with client_watch.watching(request.environ, on_leave=cancel.set):
                content, calls, lps, finish, usage = collect(chunks, shape["tool_mode"])
        finally:
            stats.busy(-1)
            chunks.close()
        usage = usage_with_timings(usage)
        finished(model, usage)
        return jsonify(completion(cid, model, content, finish, usage, lps if shape["logprobs"] else None, calls))

    def finished(model, usage):
        stats.record(usage)
        metrics.tokens.labels(model).inc(usage["completion_tokens"])
        if usage["timings"]["tokens_per_second"]:
            metrics.tok_per_s.labels(model).set(usage["timings"]["tokens_per_second"])

    def stream_frames(frames, chunks, environ, cancel, first=None):
        stats.busy(+1)
        metrics.active_streams.inc()
        try:
            if first is not None:
                yield sse(first)
            # A write fails only when there is something to write: a stream waiting in the queue (or in its
            # prefill) would not notice its client leaving. The watcher does, and cancels it.
            with client_watch.watching(environ, on_leave=cancel.set):
                yield from frames
            yield sse("[DONE]")
        except Exception as e:  # noqa: BLE001 - headers are gone: report in-band, as OpenAI does
            log.exception("generation failed")
            yield sse(ApiError(500, f"Generation failed: {e}", type="server_error", code="engine_error").body())
            yield sse("[DONE]")
        finally:
            stats.busy(-1)
            metrics.active_streams.dec()
            chunks.close()  # a client that hung up cancels its job here

    def stream_chunks(events, cid, model, include_usage):
        for delta, logprobs, finish_reason, usage in events:
            if delta is not None:
                yield sse(chunk(cid, model, delta=delta, logprobs=logprobs))
            if finish_reason:
                usage = usage_with_timings(usage)
                finished(model, usage)
                yield sse(chunk(cid, model, finish_reason=finish_reason))
                if include_usage:
                    yield sse(chunk(cid, model, usage=usage))

    @app.post("/v1/completions")
    def text_completions():  # a prompt continued, or fill-in-the-middle with `suffix` (editor plugins)
        req = completions.parse_completion_request(json_body(), SEED_DEFAULTS)
        params = req["params"]
        if params["logprobs"] and "logprobs" not in engine.features:
            raise ApiError(400, "This engine does not report logprobs.", code="invalid_parameter", param="logprobs")
        ids = completions.prompt_ids(engine, req["prompt"], req["suffix"])
        _, params["max_tokens"] = budget(None, params["max_tokens"], prompt=len(ids))
        model, cid, cancel = engine.model_name, completions.new_completion_id(), threading.Event()
        chunks = engine.generate_ids(ids, GenParams(**params), cancel)
        if req["stream"]:
            frames = completion_frames(chunks, cid, model, params["logprobs"], req["include_usage"])
            return sse_response(stream_frames(frames, chunks, request.environ, cancel))
        stats.busy(+1)
        try:
            with client_watch.watching(request.environ, on_leave=cancel.set):
                text, entries, finish, usage = completions.collect(chunks)
        finally:
            stats.busy(-1)
            chunks.close()
        usage = usage_with_timings(usage)
        finished(model, usage)
        lp = completions.legacy_logprobs(entries) if params["logprobs"] else None
        return jsonify(completions.text_completion(cid, model, text, finish, lp, usage))

    def completion_frames(chunks, cid, model, want_logprobs, include_usage):
        for frame, usage in completions.stream_events(chunks, cid, model, want_logprobs):
            yield sse(frame)
            if usage is not None:
                usage = usage_with_timings(usage)
                finished(model, usage)
                if include_usage:
                    yield sse(completions.text_completion(cid, model, None, None, usage=usage))

    def messages_from_body():
        body = json_body()
        if "text" in body and "messages" not in body:
            if not isinstance(body["text"], str):
                raise ApiError(400, "'text' must be a string.", code="invalid_parameter", param="text")
            return None, body["text"]
        return parse_messages(body.get("messages")), None

    @app.post("/v1/token/count")
    def token_count():
        messages, text = messages_from_body()
        n = len(engine.tokenize(text)) if messages is None else engine.count_tokens(messages)
        return jsonify({"count": n, "max_seq_len": engine.max_seq_len})

    @app.post("/v1/token/encode")
    def token_encode():  # TabbyAPI's shape: {"tokens": [...], "length": n}
        messages, text = messages_from_body()
        ids = engine.tokenize(text) if messages is None else engine.encode(messages)
        return jsonify({"tokens": ids, "length": len(ids)})

    @app.get("/v1/models")
    def models():
        return jsonify({"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                                    "created": int(stats.started), "owned_by": "local",
                                                    "max_seq_len": engine.max_seq_len}]})

    @app.get("/status")
    @app.get("/qwen/status")
    def status():
        st = engine.status()
        st.update(stats.snapshot(), queue_length=engine.queue_length(), online=True)
        metrics.queue_length.set(st["queue_length"])
        return jsonify(st)

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    @app.get("/")
    def index():
        return jsonify({"service": "qwen_server", "model": engine.model_name, "endpoints": endpoint_list(app)})

    return app


def parse_args(argv=None):
    load_env()  # .env fills in what flags leave out; flags win
    env = os.environ.get
    p = argparse.ArgumentParser(description="Local Qwen 2.5 Coder server (OpenAI-compatible, streaming).")
    p.add_argument("-m", "--model", default=env("QWEN_MODEL_PATH"),
                   help="a .gguf file (or a dir holding one), or a Hugging Face-format or EXL2 model dir "
                        "(env QWEN_MODEL_PATH)")
    p.add_argument("-cache", "--cache", default=env("QWEN_CACHE", "q4"), choices=CACHE_MODES,
                   help="KV cache precision (env QWEN_CACHE, default q4: about 1/4 the memory of fp16; llamacpp uses "
                        "f16/q8_0/q5_1/q4_0, transformers the model's dtype; /status says what is used)")
    p.add_argument("-l", "--max-seq-len", type=int, default=env("QWEN_MAX_SEQ_LEN") or None,
                   help="context length in tokens (env QWEN_MAX_SEQ_LEN; default: the model's own, at most 16384)")
    p.add_argument("--engine", default=env("QWEN_ENGINE", "auto"), choices=ENGINES,
                   help="auto = llamacpp for a GGUF model; for a model dir exllamav2 when CUDA is present, "
                        "else transformers (env QWEN_ENGINE)")
    p.add_argument("-t", "--threads", type=int, default=env("QWEN_THREADS") or None,
                   help="CPU threads of the llamacpp engine (env QWEN_THREADS; default: the physical cores)")
    p.add_argument("--host", default=env("QWEN_HOST", "127.0.0.1"), help="bind address (env QWEN_HOST)")
    p.add_argument("--port", type=int, default=env("QWEN_PORT", "5001"), help="port (env QWEN_PORT, default 5001)")
    p.add_argument("--http-threads", type=int, default=env("QWEN_HTTP_THREADS", "16"),
                   help="requests served or queued at once, streams included; more wait for a thread "
                        "(env QWEN_HTTP_THREADS, default 16)")
    p.add_argument("--max-tokens-default", type=int, default=env("QWEN_MAX_TOKENS_DEFAULT", "2048"),
                   help="max_tokens for a request that sends none, cut to the room left in the context "
                        "(env QWEN_MAX_TOKENS_DEFAULT, default 2048)")
    args = p.parse_args(argv)
    if not args.model:
        p.error("no model: pass -m PATH or set QWEN_MODEL_PATH in .env")
    if args.max_seq_len is not None and args.max_seq_len < 16:
        p.error("-l must be at least 16 tokens")
    if args.http_threads < 1 or args.max_tokens_default < 1:
        p.error("--http-threads and --max-tokens-default must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("-t must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    warn_if_exposed("qwen_server", args.host)  # it has no API key of its own

    def load_app():  # in the server's worker process: the model loads there, once
        log.info("loading %s with engine=%s cache=%s", args.model, args.engine, args.cache)
        try:
            engine = create_engine(args.engine, args.model, args.cache, args.max_seq_len, args.threads)
            engine.load()
        except EngineError as e:
            raise StartupError(f"qwen_server: error: {e}") from None
        st = engine.status()
        mem = st["memory"]
        log.info("ready: model=%s arch=%s engine=%s cache=%s context=%d device=%s %s used=%.2f/%.2f GiB "
                 "load=%.1fs", st["model"], st["architecture"], st["engine"], st["cache_mode"], st["max_seq_len"],
                 st["device"], mem["kind"], mem["used_bytes"] / 2**30, mem["total_bytes"] / 2**30,
                 st["load_seconds"])
        if st["cache_note"]:
            log.warning("%s", st["cache_note"])
        log.info("serving on http://%s:%d (OpenAI base_url http://%s:%d/v1)", args.host, args.port, args.host,
                 args.port)
        return create_app(engine, args.max_tokens_default, allowed_host_names("QWEN_ALLOWED_HOSTS", args.host))

    return serve(load_app, args.host, args.port, args.http_threads, os.environ.get("LOG_LEVEL", "INFO"))


if __name__ == "__main__":
    sys.exit(main())
