#!/usr/bin/env python3
"""mypy over the code, held to a committed baseline of errors per file that may only shrink.

    .venv/bin/python tools/mypy_baseline.py            compare with the baseline (exit 1: worse)
    .venv/bin/python tools/mypy_baseline.py --update   write the current counts as the baseline

tests/test_static.py runs the comparison as part of ./test. The baseline counts errors per
file, not error lines, so edits that shift line numbers do not disturb it. mypy's settings
are in pyproject.toml ([tool.mypy]); its cache is .mypy_cache (a rerun takes a second or two).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "tests" / "mypy-baseline.txt"
TARGETS = ("app.py", "worker.py", "backstop", "web")  # web/ once the routes move there
ERROR_LINE = re.compile(r"^(?P<path>[^:]+\.py):\d+: error: ")
UPDATE_HINT = ".venv/bin/python tools/mypy_baseline.py --update"


def targets() -> list[str]:
    """The checked paths that exist in this checkout."""
    return [name for name in TARGETS if (ROOT / name).exists()]


def run_mypy() -> tuple[Counter[str], str]:
    """Errors per file and mypy's whole output. Raises RuntimeError if mypy itself failed."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", *targets()],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, 1):  # 2: a bad configuration or a crash, not type errors
        raise RuntimeError(f"mypy failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    counts = Counter(m["path"] for line in done.stdout.splitlines()
                     if (m := ERROR_LINE.match(line)))
    return counts, done.stdout


def read_baseline(path: Path = BASELINE) -> Counter[str]:
    """The baseline's "path count" lines; "#" starts a comment."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, count = line.rsplit(maxsplit=1)
            counts[name] = int(count)
    return counts


def write_baseline(counts: Counter[str], path: Path = BASELINE) -> None:
    lines = [f"# mypy errors per file; may only shrink ({UPDATE_HINT}).",
             f"# total {sum(counts.values())}"]
    lines += [f"{name} {count}" for name, count in sorted(counts.items()) if count]
    path.write_text("\n".join(lines) + "\n")


def compare(current: Counter[str], baseline: Counter[str]) -> tuple[list[str], list[str]]:
    """(files with more errors than their baseline, files with fewer), as readable lines."""
    worse, better = [], []
    for name in sorted(set(current) | set(baseline)):
        now, before = current[name], baseline[name]
        if now != before:
            (worse if now > before else better).append(f"{name}: {before} -> {now}")
    return worse, better


def main(argv: list[str]) -> int:
    current, output = run_mypy()
    if "--update" in argv:
        before = sum(read_baseline().values()) if BASELINE.exists() else None
        write_baseline(current)
        print(f"wrote {BASELINE.relative_to(ROOT)}: {sum(current.values())} errors "
              f"(was {before})")
        return 0
    worse, better = compare(current, read_baseline())
    for line in worse:
        print(f"more mypy errors than the baseline: {line}")
    if worse:
        print(output)
    elif better:
        print("fewer mypy errors than the baseline; lower it with: " + UPDATE_HINT)
    print(f"mypy: {sum(current.values())} errors (baseline {sum(read_baseline().values())})")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
