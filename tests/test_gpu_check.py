"""`make gpu-check`'s preflight (tools/gpu_check.py): on a machine that lacks what the GPU tests assume, it
says what is missing, one line each, and builds nothing. Run here with a PYTHONPATH that shadows packages."""
import os
import subprocess
import sys

from helpers import REPO_ROOT
from tools import gpu_check


def preflight(tmp_path, **packages):
    """tools/gpu_check.py --preflight with `packages` ({name: __init__.py source}) first on the path."""
    for name, source in packages.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(source)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    p = subprocess.run([sys.executable, "tools/gpu_check.py", "--preflight"], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def test_an_old_transformers_and_no_click_are_named_before_any_build(tmp_path):
    code, out = preflight(tmp_path, transformers='__version__ = "4.46.3"\n',
                          click='raise ImportError("No module named click")\n')
    named = ("MISSING  transformers", "MISSING  click")
    missing = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(named)]
    assert code == 1 and len(missing) == 2, out
    assert "MISSING  flask is not importable (ImportError: No module named click)" in out  # flask imports click
    assert "transformers >= 4.56 needed, found 4.46.3" in missing[0] and "from_pretrained(dtype=...)" in missing[0]
    assert missing[1].startswith("MISSING  click is not importable") and "make gpu-wheels" in missing[1]
    assert "FAIL  preflight" in out and "gpu-check: FAIL (preflight)" in out
    assert "GPU" not in out.replace("gpu-check", "").replace("make gpu-wheels", "")  # stopped before step 1


def test_a_wheel_that_fails_while_importing_is_missing_too(tmp_path):
    code, out = preflight(tmp_path, transformers='raise RuntimeError("tokenizers>=0.22 is required")\n')
    assert code == 1 and "MISSING  transformers is not importable (RuntimeError: tokenizers>=0.22" in out, out


def test_glibc_older_than_llguidance_wheels_is_one_line():
    line = gpu_check.glibc_problem("glibc 2.28")
    assert line.startswith("glibc >= 2.31 needed, found 2.28") and "llguidance" in line and "\n" not in line
    assert gpu_check.glibc_problem("glibc 2.31") is None and gpu_check.glibc_problem("glibc 2.39") is None
    assert gpu_check.glibc_problem("") is None  # musl or unknown: llguidance's import check speaks instead
