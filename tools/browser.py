"""Find Debian's chromium for the browser tests, installing it with apt-get when we can.

Standard library only: tools/bootstrap.py calls ensure_chromium() before the virtualenv exists.
Playwright drives this chromium; it never downloads a browser of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
SKIPPED = "the browser tests will be skipped"
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
# Wait for a dpkg lock held by another apt run instead of failing at once.
APT_LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=300"]


def works(path: str) -> bool:
    """True when `path --version` runs and exits 0 (a snap stub or a broken install does not)."""
    try:
        result = subprocess.run([path, "--version"], capture_output=True, timeout=60,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def find_chromium() -> str | None:
    """The first usable chromium: /usr/bin/chromium, then chromium or chromium-browser on PATH."""
    for name in CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK) and works(path):
            return path
    return None


def why_not_installable() -> str | None:
    """Why apt-get cannot install chromium here, or None when it can."""
    if getattr(os, "geteuid", lambda: -1)() != 0:
        return "installing it needs root"
    if shutil.which("apt-get") is None:
        return "apt-get is not available to install it"
    return None


def apt_get(*args: str) -> str | None:
    """Run apt-get quietly; None on success, else the last line it printed."""
    try:
        result = subprocess.run(["apt-get", *APT_LOCK_WAIT, *args], env=APT_ENV, text=True,
                                capture_output=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
    return f"exit {result.returncode}: {lines[-1]}"


def install_chromium() -> str | None:
    """apt-get update, then install Debian's chromium; None on success, else why it failed."""
    error = apt_get("update")
    if error is None:
        error = apt_get("install", "-y", "--no-install-recommends", "chromium")
    return error


def ensure_tool(name: str, package: str, find, install, skipped: str) -> str | None:
    """The path of a usable tool (find()), installing its Debian package with install() if
    needed and possible. Prints one line when it installs, and one saying why it returns
    None (then the tests that need it are skipped: skipped says which)."""
    path = find()
    if path:
        return path
    reason = why_not_installable()
    if reason:
        print(f"no {name} found and {reason}; {skipped}", flush=True)
        return None
    print(f"installing Debian's {package} for {name} ...", flush=True)
    error = install()
    path = find()
    if path is None:
        error = error or f"installed, but `{name} --version` does not run"
        print(f"could not install {name} (apt-get {error}); {skipped}", flush=True)
    return path


def ensure_chromium() -> str | None:
    """The path of a usable chromium, installing Debian's package if needed and possible."""
    return ensure_tool("chromium", "chromium", find_chromium, install_chromium, SKIPPED)


if __name__ == "__main__":
    found = ensure_chromium()
    if found:
        print(found)
    sys.exit(0 if found else 1)
