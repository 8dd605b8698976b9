"""The project's .env, loaded without importing anything heavy: gunicorn.conf.py reads it before
prometheus_client is imported (which picks its multiprocess mode from the environment at import)."""
import os


def load_env():
    """.env from the current directory, then the project's own; real environment variables win."""
    from dotenv import find_dotenv, load_dotenv
    if os.environ.get("NO_DOTENV") == "1":  # tests: a developer's .env must not leak into them
        return
    load_dotenv(find_dotenv(usecwd=True))
    load_dotenv(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".env"))  # the project root
