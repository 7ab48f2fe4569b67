"""What the benchmark scripts that drive the CLI share (without importing torch): the ``hvae`` command in a
fresh process, and the checkout's commit for the results they write."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hvae(*args: str) -> None:
    """``python -m hvae ARGS``: the command a user runs, in a fresh process importing this checkout's src/."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "hvae", *args], check=True, env=env)


def commit() -> str:
    """The checkout's short commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def write_record(path: Path, record: dict) -> None:
    """``record`` (which names its commit: :func:`commit`) with the machine, as indented JSON at ``path`` (its
    folder made); prints where it went."""
    stamped = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", **record}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    print(f"\nwritten to {path}")
