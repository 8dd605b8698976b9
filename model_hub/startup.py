"""qwen_server's start-up step for -m: a hub name becomes local files, or the start ends with one line
and exit code 2 (no traceback)."""
import sys

from model_hub import HubError, ResolvedModel, resolve


def resolve_or_exit(spec: str, engine: str):
    """The ResolvedModel `spec` names (None for a local path); on failure `qwen_server: error: ...`, exit 2."""
    try:
        return resolve(spec, engine)
    except HubError as e:
        print(f"qwen_server: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"qwen_server: download of {spec} interrupted: run again to start it over", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


__all__ = ["resolve_or_exit", "ResolvedModel"]
