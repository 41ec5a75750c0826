"""Static checks as part of ./test: ruff is clean, and mypy finds no more errors in any file
than tests/mypy-baseline.txt allows (the baseline may only shrink)."""

from __future__ import annotations

import subprocess
import sys
import warnings

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import mypy_baseline  # noqa: E402


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_file_has_more_mypy_errors_than_its_baseline():
    current, output = mypy_baseline.run_mypy()
    worse, better = mypy_baseline.compare(current, mypy_baseline.read_baseline())
    assert not worse, (f"more mypy errors than tests/mypy-baseline.txt allows: {worse}\n"
                       f"{output}")
    if better:
        warnings.warn(f"fewer mypy errors than the baseline ({', '.join(better)}): lower it "
                      f"with {mypy_baseline.UPDATE_HINT}", stacklevel=1)


def test_the_baseline_compare_tells_worse_from_better():
    from collections import Counter

    baseline = Counter({"a.py": 2, "b.py": 1})
    assert mypy_baseline.compare(Counter({"a.py": 2, "b.py": 1}), baseline) == ([], [])
    assert mypy_baseline.compare(Counter({"a.py": 3, "c.py": 1}), baseline) == (
        ["a.py: 2 -> 3", "c.py: 0 -> 1"], ["b.py: 1 -> 0"])


def test_the_core_never_imports_flask():
    """backstop/ is shared by the worker and the web role: Flask stays in app.py and web/."""
    import ast

    offenders = []
    for path in sorted((ROOT / "backstop").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("flask", "werkzeug", "web")
                          or n.startswith("flask_")]
    assert not offenders, offenders
