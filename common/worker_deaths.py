"""qwen_server's worker processes that died after they had started (a native crash: SIGSEGV...), counted by
the embedded gunicorn's master (common/wsgi_server.py) and shown in /status."""
import logging
import time
from dataclasses import dataclass
from typing import Optional


@dataclass
class WorkerDeaths:
    """qwen_server's worker processes that died after they had started, as the master saw them. Kept in the
    master and copied into the next worker when it forks, which shows it in /status."""
    restarts: int = 0
    last_signal: Optional[str] = None  # e.g. "SIGSEGV": native code crashed
    last_exit_code: Optional[int] = None
    last_at: Optional[float] = None  # time.time()

    def view(self) -> dict:
        return {"restarts": self.restarts, "last_signal": self.last_signal, "last_exit_code": self.last_exit_code,
                "last_at": None if self.last_at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                           time.gmtime(self.last_at))}


WORKER_DEATHS = WorkerDeaths()


class DeathFilter(logging.Filter):
    """Reads how a worker died from the master's own line about it: gunicorn hands child_exit the worker,
    not its wait status. (The lines are gunicorn 27's; tests/test_startup_probe.py checks they still come.)"""
    pending = None  # (signal name or None, exit code or None) of the worker being reaped

    def filter(self, record):
        if isinstance(record.msg, str) and record.msg.startswith("Worker (pid:%s) was sent %s!"):
            DeathFilter.pending = (str(record.args[1]), None)
        elif record.msg == "Worker (pid:%s) exited with code %s.":
            DeathFilter.pending = (None, int(record.args[1]))
        return True


def child_exit(server, worker):
    """In the master, after a worker exited: a crash (a signal other than the SIGTERM of a stop, or an exit
    code) is counted; gunicorn then starts the one worker again."""
    sig, code = DeathFilter.pending or (None, None)
    DeathFilter.pending = None
    if sig in (None, "SIGTERM") and not code:
        return
    d = WORKER_DEATHS
    d.restarts, d.last_signal, d.last_exit_code, d.last_at = d.restarts + 1, sig, code, time.time()
    server.log.error("qwen_server: the worker process died (%s) and is started again (restart %d, /status "
                     "counts them); the lines above say why", sig or f"exit code {code}", d.restarts)
