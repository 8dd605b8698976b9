# gunicorn -c gunicorn.conf.py chat:app
# Threaded workers: a streaming answer holds a thread, not a whole worker.
import multiprocessing
import os

bind = f"{os.environ.get('CHAT_HOST', '127.0.0.1')}:{os.environ.get('CHAT_PORT', '5000')}"
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", min(4, multiprocessing.cpu_count() * 2)))
threads = int(os.environ.get("GUNICORN_THREADS", 16))
timeout = 120           # a worker is restarted only if its main loop hangs, not for long streams
graceful_timeout = 30   # let streams finish on reload/stop
keepalive = 5
accesslog = None        # chat.py writes its own structured access log (no query text, no secrets)
limit_request_line = 8190  # long GET ?q= questions; longer ones belong in a POST body
