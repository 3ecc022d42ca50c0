"""Fault injection for the Ray runtime tests: act on a run from another thread once it has come far enough."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distrl.logging import read_jsonl


def at_env_steps(runtime: Any, run_dir: Path, steps: int, fault: Callable[[], Any],
                 timeout_s: float = 300.0) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a thread that waits until ``runtime`` has env actors and ``run_dir/metrics.jsonl`` has logged at
    least ``steps`` env steps, then calls ``fault()``. The returned dict gets ``steps`` (the env steps logged
    then) and ``value`` (what ``fault`` returned), or ``error`` if it raised; neither if the run never got there
    within ``timeout_s``."""
    out: dict[str, Any] = {}
    metrics = run_dir / "metrics.jsonl"

    def wait_then_fault() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = read_jsonl(metrics) if metrics.exists() else []
            if runtime.actor_handles and rows and rows[-1].get("charts/env_steps", 0) >= steps:
                try:
                    out["value"] = fault()
                except Exception as e:  # reported by the caller's assertion
                    out["error"] = repr(e)
                    return
                out["steps"] = rows[-1]["charts/env_steps"]
                return
            time.sleep(0.2)

    t = threading.Thread(target=wait_then_fault, daemon=True)
    t.start()
    return t, out
