"""Set-up shared by ./run and ./test, standard library only: the virtualenv and its packages.

Packages are installed again only when the requirements files change (a hash stamp).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"


def _requirements_hash(requirements: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("requirements*.txt")):
        digest.update(path.read_bytes())
    digest.update(requirements.name.encode())
    return digest.hexdigest()


def ensure_venv(requirements: str) -> Path:
    """Create .venv if needed and install requirements into it; return its python."""
    if sys.version_info[:2] < (3, 11):  # noqa: UP036  (./run may start under an old python3)
        sys.exit(f"Backstop needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print("creating the virtualenv in .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    req = ROOT / requirements
    stamp = VENV / f".installed-{req.stem}"
    wanted = _requirements_hash(req)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {requirements} ...", flush=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                       check=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
        stamp.write_text(wanted)
    return PYTHON
