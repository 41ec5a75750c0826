"""Find promtool for the Prometheus tests, installing Debian's prometheus package when we can.

Standard library only, like tools/browser.py (./test calls ensure_promtool() before pytest).
The package ships a Prometheus server too: it is installed with service starts refused
(Debian's policy-rc.d, exit 101) and, on a systemd host, left disabled, so no server is
running, now or after a reboot, because the tests wanted promtool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    from browser import apt_get, ensure_tool, works
except ImportError:  # imported as tools.promtool (by the tests), not run from tools/
    from tools.browser import apt_get, ensure_tool, works

SKIPPED = "the promtool checks of the rules, the dashboard's scrape and /metrics will be skipped"
POLICY_RC = Path("/usr/sbin/policy-rc.d")
REFUSE_STARTS = "#!/bin/sh\n# tools/promtool.py: no service starts while it installs\nexit 101\n"


def find_promtool() -> str | None:
    """A promtool that runs `--version`: on PATH, else Debian's /usr/bin/promtool."""
    for path in (shutil.which("promtool"), "/usr/bin/promtool"):
        if path and os.access(path, os.X_OK) and works(path):
            return path
    return None


def install_prometheus() -> str | None:
    """apt-get update, then install Debian's prometheus package without starting (or, under
    systemd, enabling) its server; None on success, else why it failed."""
    guard = not POLICY_RC.exists()
    if guard:
        POLICY_RC.write_text(REFUSE_STARTS)
        POLICY_RC.chmod(0o755)
    try:
        error = apt_get("update")
        if error is None:
            error = apt_get("install", "-y", "--no-install-recommends", "prometheus")
    finally:
        if guard:
            POLICY_RC.unlink(missing_ok=True)
    if Path("/run/systemd/system").is_dir():  # systemd is init: do not start it at boot
        subprocess.run(["systemctl", "disable", "--now", "--quiet", "prometheus"],
                       capture_output=True, stdin=subprocess.DEVNULL, check=False)
    return error


def ensure_promtool() -> str | None:
    """The path of a usable promtool, installing Debian's package if needed and possible."""
    return ensure_tool("promtool", "prometheus package", find_promtool, install_prometheus,
                       SKIPPED)


if __name__ == "__main__":
    found = ensure_promtool()
    if found:
        print(found)
    sys.exit(0 if found else 1)
