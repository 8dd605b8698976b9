"""A terminal chat against a running gateway: no browser, no curl.

    python chat.py ask "Привет!"          # one answer, streamed; model "auto" (POST /ask) picks the model
    python chat.py ask -m gigachat "…"    # a model of your choice: auto (the default), gigachat or qwen
    python chat.py chat                   # interactive; the conversation (session) is kept between turns
    echo "вопрос" | python chat.py ask    # the question from stdin

It speaks the gateway's HTTP API (POST /ask, /qwen or /gigachat with stream=1, Server-Sent Events) through the
standard library only, so it runs from any checkout: CHAT_URL (or CHAT_PORT) and CHAT_API_KEY from the
environment or .env say where the gateway is and the key it wants."""
import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from common.env import load_env

PROVIDERS = ("auto", "gigachat", "qwen")  # the first configured one is the default
PATHS = {"auto": "/ask"}  # and /gigachat, /qwen


class CliError(Exception):
    """Something to tell the user in one line (exit status 1)."""


class Gateway:
    def __init__(self, url, api_key=""):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local gateway: no proxy

    def open(self, path, body=None, timeout=600):
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        headers = dict(self.headers, **({"Content-Type": "application/json"} if data else {}))
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            return self.opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise CliError(_error_message(e.read()) or f"HTTP {e.code} from {self.url}{path}") from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(f"The gateway is not reachable at {self.url} ({getattr(e, 'reason', e)}): start it with "
                           f"`make start` (the demo) or `python chat.py`, or set CHAT_URL.") from None

    def default_provider(self):
        with self.open("/config", timeout=10) as resp:
            configured = json.loads(resp.read()).get("providers", {})
        return next((p for p in PROVIDERS if configured.get(p, {}).get("configured")), "qwen")

    def ask(self, provider, question, session=None, system=None, out=sys.stdout):
        """Streams one answer to `out`; returns the session id it belongs to."""
        body = {"q": question, "stream": 1}
        if session:
            body["session"] = session
        if system is not None:
            body["system"] = system
        with self.open(PATHS.get(provider, f"/{provider}"), body) as resp:
            for raw in resp:
                if not raw.startswith(b"data: "):
                    continue
                event = json.loads(raw[6:])
                session = event.get("session", session)
                if event["type"] == "start" and event.get("route"):  # who answers, and why (model auto)
                    print(f"[{event['provider']}: {event['route']}]", file=sys.stderr, flush=True)
                elif event["type"] == "delta":
                    out.write(event["text"])
                    out.flush()
                elif event["type"] == "error":
                    out.write("\n")
                    raise CliError(event.get("message") or "the answer failed")
        out.write("\n")
        out.flush()
        return session


def _error_message(raw):
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None


def interactive(gw, provider, system=None):
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    print(f"Chatting with {provider} at {gw.url}. /new starts a new conversation; Ctrl-D or /quit leaves.")
    session = None
    while True:
        try:
            question = input(f"{provider}> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if question in ("/quit", "/exit"):
            return
        if question == "/new":
            session = None
            continue
        if not question:
            continue
        try:
            session = gw.ask(provider, question, session, system if session is None else None)
        except KeyboardInterrupt:  # stops this answer (the gateway saves it as cancelled), not the chat
            print("\n[stopped]")
        except CliError as e:
            print(f"error: {e}", file=sys.stderr)


def main(argv):
    load_env()
    p = argparse.ArgumentParser(prog="chat.py", description="Chat with a running gateway from the terminal.")
    sub = p.add_subparsers(dest="command", required=True)
    default_url = os.environ.get("CHAT_URL") or f"http://127.0.0.1:{os.environ.get('CHAT_PORT') or 5000}"
    for name, text in (("ask", "one answer, streamed (no question: read stdin, or chat when it is a terminal)"),
                       ("chat", "interactive chat keeping the conversation")):
        s = sub.add_parser(name, help=text, description=text)
        if name == "ask":
            s.add_argument("question", nargs="*", help="the question (quote it or not)")
        s.add_argument("-m", "--model", choices=PROVIDERS,
                       help="auto (the gateway picks: code to Qwen, the rest to GigaChat, secrets never to the "
                            "cloud), gigachat or qwen (default: auto, else the first one the gateway has configured)")
        s.add_argument("--system", help="system prompt for a new conversation (default: the gateway's)")
        s.add_argument("--url", default=default_url, help=f"the gateway (env CHAT_URL; now {default_url})")
    args = p.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="replace")  # a terminal that can't show a character gets '?', not a traceback
    gw = Gateway(args.url, os.environ.get("CHAT_API_KEY", ""))
    try:
        provider = args.model or gw.default_provider()
        question = " ".join(getattr(args, "question", None) or [])
        if args.command == "ask" and not question and not sys.stdin.isatty():
            question = sys.stdin.read().strip()
        if question:
            gw.ask(provider, question, system=args.system)
        else:
            interactive(gw, provider, args.system)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
