"""The README stays a newcomer's read, and the docs it sends people to stay true to the code: every link
and anchor resolves, every variable .env.example sets is in the configuration reference, and every flag of
both servers' `--help` is in their docs. (The README's commands themselves run in test_first_minutes.py.)"""
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, clean_env

README = os.path.join(REPO_ROOT, "README.md")
DOCS = os.path.join(REPO_ROOT, "docs")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def doc_files():
    return [README] + sorted(os.path.join(DOCS, n) for n in os.listdir(DOCS) if n.endswith(".md"))


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    text = re.sub(r"^```.*?^```", "", read(path), flags=re.S | re.M)  # no headings inside code blocks
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_is_short():
    lines = read(README).count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move details to docs/ and link them"


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for path in doc_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", read(path)):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(dest):
                broken.append(f"{os.path.relpath(path, REPO_ROOT)}: {target} (no such file)")
            elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                broken.append(f"{os.path.relpath(path, REPO_ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_env_example_variable_is_in_the_configuration_reference():
    names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", read(os.path.join(REPO_ROOT, ".env.example")), re.M))
    assert len(names) > 30, names
    ops = read(os.path.join(DOCS, "operations.md"))
    reference = ops[ops.index("## Configuration reference"):]
    reference = reference[:reference.index("\n## ", 3)]
    missing = sorted(n for n in names if f"`{n}`" not in reference)
    assert not missing, f"in .env.example but not in docs/operations.md's configuration reference: {missing}"


def help_env():
    env = dict(os.environ)
    for k, v in clean_env().items():  # an overlay: None removes
        env.pop(k, None) if v is None else env.__setitem__(k, v)
    return env


@pytest.mark.parametrize("script, doc", [("qwen_server.py", "qwen_server.md"), ("chat.py", "operations.md")])
def test_every_flag_of_help_is_documented(script, doc):
    r = subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), "--help"], capture_output=True,
                       text=True, timeout=120, env=help_env(), cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", r.stdout.split("options:", 1)[1])) - {"-h", "--help"}
    assert flags, r.stdout
    text = read(os.path.join(DOCS, doc)) + read(README)
    missing = sorted(f for f in flags if f"`{f}" not in text and f"[{f}" not in text)  # a table cell, a usage line
    assert not missing, f"{script} --help has flags that docs/{doc} and the README never mention: {missing}"
