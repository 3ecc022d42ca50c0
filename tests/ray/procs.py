"""Helpers for the tests that start their own `ray start --block` processes (imported by test modules here)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path


def stop_group(proc: subprocess.Popen, temp_dir: Path | None = None, timeout_s: float = 60.0) -> None:
    """SIGTERM a `ray start --block` process (it stops its node), then SIGKILL its process group if anything is
    left; remove its Ray temp dir. Never `ray stop`: that would stop every Ray instance on a shared machine."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)
