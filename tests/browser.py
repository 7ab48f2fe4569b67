"""Headless Chromium for the report tests (Debian's chromium package; the tests skip without it)."""

import os
import subprocess
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.access(CHROMIUM, os.X_OK)
SKIP_REASON = f"{CHROMIUM} not installed (apt-get install chromium): no headless render check"


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile and no background networking (the machine is offline)."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # a container's /dev/shm can be too small for it
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, env=env)


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after Chromium has loaded and rendered it."""
    res = chromium(["--dump-dom", page.resolve().as_uri()], profile)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout
