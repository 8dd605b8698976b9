"""Benchmarks, run from the repository root as modules: `.venv/bin/python -m bench.gateway_overhead`.

`-m` puts the repository root on the import path (the project: chat, db, engines, tools, ...). The one
addition is tests/: the benches start their servers with the tests' own helpers (tests/helpers.py,
tests/pg_server.py, tests/routing_eval.py), which import one another by their bare names, as pytest
sees them (pyproject.toml's pythonpath)."""
import os
import sys

TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
if TESTS_DIR not in sys.path:
    sys.path.append(TESTS_DIR)
