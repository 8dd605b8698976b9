"""engines/ is a package whose __init__ is only a face for callers: its modules import each other
(engines.base, engines.decoding, ...), never the face, so no import runs back up to engines/__init__.py."""
import ast
import os

from helpers import REPO_ROOT

ENGINES_DIR = os.path.join(REPO_ROOT, "engines")


def imports_of(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_engine_modules_never_import_the_package_face():
    modules = [f for f in os.listdir(ENGINES_DIR) if f.endswith(".py") and f != "__init__.py"]
    assert {"base.py", "decoding.py", "turns.py", "factory.py"} <= set(modules)
    upward = {f: m for f in modules for m in imports_of(os.path.join(ENGINES_DIR, f)) if m == "engines"}
    assert upward == {}, upward


def test_the_face_keeps_the_public_names():
    import engines
    from engines import base, decoding, factory, turns
    assert engines.GenParams is base.GenParams and engines.Chunk is base.Chunk and engines.Engine is base.Engine
    assert engines.decode_loop is decoding.decode_loop and engines.TextStream is decoding.TextStream
    assert engines.create_engine is factory.create_engine and engines.Turns is turns.Turns
    assert set(engines.__all__) <= set(dir(engines))
