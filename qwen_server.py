"""Local Qwen 2.5 Coder server: an OpenAI-compatible Flask API over an exllamav2 (GPU), llama.cpp
(CPU, GGUF) or transformers (CPU/GPU) engine, streaming token by token.

    python qwen_server.py -m /models/Qwen2.5-Coder-7B-Instruct -cache q4 -l 16384
    python qwen_server.py -m Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M     (or -m qwen2.5-coder-7b; --list-models)
"""
import argparse
import logging
import sys

from flask import Flask

from common import openapi
from common.api_common import (
    LOOPBACK_NAMES,
    Metrics,
    host_names,
    install_common,
    load_env,
    setup_logging,
    warn_if_exposed,
)
from common.framing import strict_framing
from common.wsgi_server import StartupError, serve
from engines.base import EngineError
from engines.factory import create_engine
from model_hub import fit
from model_hub.startup import resolve_or_exit
from qwen_api import routes, startup
from qwen_api.openapi_spec import qwen_server_spec
from qwen_api.service import ModelService
from qwen_api.settings import QwenSettings

log = logging.getLogger("qwen_server")


def create_app(engine, max_tokens_default=2048, allowed_hosts=LOOPBACK_NAMES, source=None):
    """The server for one loaded engine (`source`: the hub model it came from, a ResolvedModel): shared
    hooks, OpenAPI, and the routes in qwen_api/routes.py."""
    app = Flask(__name__)
    metrics = Metrics("qwen")
    install_common(app, metrics, "qwen_server", allowed_hosts, "QWEN_ALLOWED_HOSTS")
    app.wsgi_app = strict_framing(app.wsgi_app)  # a 400 for broken HTTP framing, before anything else
    openapi.register(app, qwen_server_spec)  # GET /openapi.json (qwen_api/openapi_spec.py)
    app.extensions["qwen"] = ModelService(engine, metrics, max_tokens_default, source)
    app.register_blueprint(routes.bp)
    return app


def parse_args(argv=None) -> tuple:
    """(the settings, the start-up flags) from the .env, the environment and the command line; the flags win.
    A bad value ends the start in one line naming its variable or flag (exit status 2)."""
    load_env()  # .env fills in what the environment leaves out
    settings = QwenSettings.from_env("qwen_server")
    p = argparse.ArgumentParser(description="Local Qwen 2.5 Coder server (OpenAI-compatible, streaming).",
                                epilog=settings.env_only(), formatter_class=argparse.RawDescriptionHelpFormatter)
    settings.add_flags(p)
    p.add_argument("--list-models", action="store_true",
                   help="print the Qwen 2.5 Coder catalogue (short names, repo:quant, size, memory needed) and exit")
    p.add_argument("--download-only", action="store_true",
                   help="download -m into the cache (if it is a repo id or short name), print its local path, exit")
    args = p.parse_args(argv)
    settings = settings.with_flags(args, p)
    if not settings.model_path and not args.list_models:
        p.error("no model: pass -m PATH (or a repo id or short name: --list-models) or set QWEN_MODEL_PATH in .env")
    return settings, args


def main(argv=None):
    s, args = parse_args(argv)
    setup_logging(s.log_level)
    if args.list_models:
        from model_hub.catalogue import table
        print(table())
        return 0
    source = resolve_or_exit(s.model_path, s.engine)  # a repo id or short name -> files in the HF cache
    model_path = source.path if source else s.model_path
    if args.download_only:
        print(model_path)
        return 0
    warn_if_exposed("qwen_server", s.host)  # it has no API key of its own

    def load_app():  # in the server's worker process: the model loads there, once
        log.info("loading %s with engine=%s cache=%s", model_path, s.engine, s.cache)
        try:
            engine = create_engine(s.engine, model_path, s.cache, s.max_seq_len, s.threads, s.threads_batch,
                                   s.llama_amx, jit=(s.exllamav2_jit_std, s.exllamav2_jit_verbose))
            if source:
                engine.model_name = source.model_name
            fit.warn_before_load(engine, s.max_seq_len, s.cache)
            child = startup.start_probe(engine, model_path, s) if engine.probe_in_child else None
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
        log.info("serving on http://%s:%d (OpenAI base_url http://%s:%d/v1)", s.host, s.port, s.host, s.port)
        return create_app(engine, s.max_tokens_default, host_names(s.allowed_hosts, s.host), source)

    return serve(load_app, s.host, s.port, s.http_threads, s.log_level, timeout_s=s.slow_client_timeout)


if __name__ == "__main__":
    sys.exit(main())
