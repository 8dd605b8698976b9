"""Local Qwen 2.5 Coder server: an OpenAI-compatible Flask API over an exllamav2 (GPU), llama.cpp
(CPU, GGUF) or transformers (CPU/GPU) engine, streaming token by token.

    python qwen_server.py -m /models/Qwen2.5-Coder-7B-Instruct -cache q4 -l 16384
    python qwen_server.py -m Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M     (or -m qwen2.5-coder-7b; --list-models)
"""
import argparse
import logging
import os
import sys

from flask import Flask

from common import openapi, request_reader
from common.framing import strict_framing
from common.api_common import (LOOPBACK_NAMES, Metrics, allowed_host_names, install_common, load_env, setup_logging,
                               warn_if_exposed)
from common.wsgi_server import StartupError, serve
from engines import CACHE_MODES, ENGINES, EngineError, create_engine
from model_hub import fit
from model_hub.startup import resolve_or_exit
from qwen_api import routes, startup
from qwen_api.service import ModelService

log = logging.getLogger("qwen_server")


def create_app(engine, max_tokens_default=2048, allowed_hosts=LOOPBACK_NAMES, source=None):
    """The server for one loaded engine (`source`: the hub model it came from, a ResolvedModel): shared
    hooks, OpenAPI, and the routes in qwen_api/routes.py."""
    app = Flask(__name__)
    metrics = Metrics("qwen")
    install_common(app, metrics, "qwen_server", allowed_hosts, "QWEN_ALLOWED_HOSTS")
    app.wsgi_app = strict_framing(app.wsgi_app)  # a 400 for broken HTTP framing, before anything else
    openapi.register(app, openapi.qwen_server_spec)  # GET /openapi.json
    app.extensions["qwen"] = ModelService(engine, metrics, max_tokens_default, source)
    app.register_blueprint(routes.bp)
    return app


def parse_args(argv=None):
    load_env()  # .env fills in what flags leave out; flags win
    env = os.environ.get
    p = argparse.ArgumentParser(description="Local Qwen 2.5 Coder server (OpenAI-compatible, streaming).",
                                epilog=request_reader.HELP)
    p.add_argument("-m", "--model", default=env("QWEN_MODEL_PATH"),
                   help="a .gguf file (or a dir holding one), a Hugging Face-format or EXL2 model dir, a Hugging "
                        "Face repo id owner/repo[:QUANT] (GGUF quant tag or EXL2 branch; downloaded once into the "
                        "HF cache, then used offline) or a short name from --list-models (env QWEN_MODEL_PATH)")
    p.add_argument("--list-models", action="store_true",
                   help="print the Qwen 2.5 Coder catalogue (short names, repo:quant, size, memory needed) and exit")
    p.add_argument("--download-only", action="store_true",
                   help="download -m into the cache (if it is a repo id or short name), print its local path, exit")
    p.add_argument("-cache", "--cache", default=env("QWEN_CACHE", "q4"), choices=CACHE_MODES,
                   help="KV cache precision (env QWEN_CACHE, default q4: about 1/4 the memory of fp16; llamacpp uses "
                        "f16/q8_0/q5_1/q4_0, transformers the model's dtype; /status says what is used)")
    p.add_argument("-l", "--max-seq-len", type=int, default=env("QWEN_MAX_SEQ_LEN") or None,
                   help="context length in tokens (env QWEN_MAX_SEQ_LEN; default: the model's own, at most 16384; "
                        "beyond the model's own it runs with a warning: answers degrade past that length)")
    p.add_argument("--engine", default=env("QWEN_ENGINE", "auto"), choices=ENGINES,
                   help="auto = llamacpp for a GGUF model; for a model dir exllamav2 when CUDA is present, "
                        "else transformers (env QWEN_ENGINE)")
    p.add_argument("-t", "--threads", type=int, default=env("QWEN_THREADS") or None,
                   help="CPU threads of the llamacpp engine (env QWEN_THREADS; default: the physical cores)")
    p.add_argument("--threads-batch", type=int, default=env("QWEN_THREADS_BATCH") or None,
                   help="the llamacpp engine's threads for prompts (env QWEN_THREADS_BATCH; default: -t, else "
                        "the physical cores)")
    p.add_argument("--host", default=env("QWEN_HOST", "127.0.0.1"), help="bind address (env QWEN_HOST)")
    p.add_argument("--port", type=int, default=env("QWEN_PORT", "5001"), help="port (env QWEN_PORT, default 5001)")
    p.add_argument("--http-threads", type=int, default=env("QWEN_HTTP_THREADS", "16"),
                   help="requests served or queued at once, streams included; more wait for a thread "
                        "(env QWEN_HTTP_THREADS, default 16)")
    p.add_argument("--max-tokens-default", type=int, default=env("QWEN_MAX_TOKENS_DEFAULT", "2048"),
                   help="max_tokens for a request that sends none, cut to the room left in the context "
                        "(env QWEN_MAX_TOKENS_DEFAULT, default 2048)")
    args = p.parse_args(argv)
    if not args.model and not args.list_models:
        p.error("no model: pass -m PATH (or a repo id or short name: --list-models) or set QWEN_MODEL_PATH in .env")
    if args.max_seq_len is not None and args.max_seq_len < 16:
        p.error("-l must be at least 16 tokens")
    if args.http_threads < 1 or args.max_tokens_default < 1:
        p.error("--http-threads and --max-tokens-default must be at least 1")
    if any(t is not None and t < 1 for t in (args.threads, args.threads_batch)):
        p.error("-t and --threads-batch must be at least 1")
    try:
        request_reader.timeout_from_env()
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    if args.list_models:
        from model_hub.catalogue import table
        print(table())
        return 0
    source = resolve_or_exit(args.model, args.engine)  # a repo id or short name -> files in the HF cache
    model_path = source.path if source else args.model
    if args.download_only:
        print(model_path)
        return 0
    warn_if_exposed("qwen_server", args.host)  # it has no API key of its own

    def load_app():  # in the server's worker process: the model loads there, once
        log.info("loading %s with engine=%s cache=%s", model_path, args.engine, args.cache)
        try:
            engine = create_engine(args.engine, model_path, args.cache, args.max_seq_len, args.threads,
                                   args.threads_batch)
            if source:
                engine.model_name = source.model_name
            fit.warn_before_load(engine, args.max_seq_len, args.cache)
            child = startup.start_probe(engine, model_path, args) if engine.probe_in_child else None
            try:
                engine.load()
            finally:
                if child:
                    startup.check_probe(engine, child)  # a crash there says more than a load error here
            probe_s = startup.first_token(engine)
        except (EngineError, startup.ProbeCrash) as e:
            raise StartupError(f"qwen_server: error: {e}") from None
        st = engine.status()
        mem = st["memory"]
        log.info("ready: model=%s arch=%s engine=%s cache=%s context=%d device=%s %s used=%.2f/%.2f GiB "
                 "load=%.1fs first token=%.2fs", st["model"], st["architecture"], st["engine"], st["cache_mode"],
                 st["max_seq_len"],
                 st["device"], mem["kind"], mem["used_bytes"] / 2**30, mem["total_bytes"] / 2**30,
                 st["load_seconds"], probe_s)
        if source:
            log.info("model from the hub: %s quant=%s file=%s commit=%s%s", source.repo, source.quant,
                     source.status()["file"] or source.path, source.commit[:12], " (cached)" * source.from_cache)
        for note in (st["cache_note"], st["context_note"]):
            if note:
                log.warning("%s", note)
        log.info("serving on http://%s:%d (OpenAI base_url http://%s:%d/v1)", args.host, args.port, args.host,
                 args.port)
        return create_app(engine, args.max_tokens_default, allowed_host_names("QWEN_ALLOWED_HOSTS", args.host),
                          source)

    return serve(load_app, args.host, args.port, args.http_threads, os.environ.get("LOG_LEVEL", "INFO"))


if __name__ == "__main__":
    sys.exit(main())
