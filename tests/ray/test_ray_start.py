"""`distrl train` starts Ray while a thread imports the runtime (distrl.runtime.ray_start): the import's errors and
a bad config found after Ray's start still surface, and a Ray started for the run is stopped again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distrl.config import quickstart_config
from distrl.runtime.ray_start import start_ray_while_importing

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def test_the_import_is_done_when_ray_is_up(ray_cluster, tmp_path, monkeypatch):
    (tmp_path / "distrl_probe_ok.py").write_text("import time\ntime.sleep(0.3)\nVALUE = 7\n")
    (tmp_path / "distrl_probe_bad.py").write_text("raise RuntimeError('probe module is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = quickstart_config()
    # this session's cluster is already up: joined, not owned
    assert start_ray_while_importing(cfg, "distrl_probe_ok") is False
    assert sys.modules["distrl_probe_ok"].VALUE == 7
    assert ray_cluster.is_initialized()
    # an import that fails in the thread fails again, with its own error, where the caller imports it
    assert start_ray_while_importing(cfg, "distrl_probe_bad") is False
    assert "distrl_probe_bad" not in sys.modules
    with pytest.raises(RuntimeError, match="probe module is broken"):
        import distrl_probe_bad  # noqa: F401


def test_a_config_error_after_rays_start_stops_that_ray_and_leaves_no_run(tmp_path):
    """An unknown learner extra is found once the runtime is imported, beside Ray's start: `distrl train`
    exits 2 naming it, creates no run directory, and stops the Ray it started (no raylet of its session left)."""
    script = textwrap.dedent(f"""
        import os, sys
        import ray
        from distrl.cli import main
        rc = main(["train", "runtime.run_dir={tmp_path / 'runs'}", "learner.extras=[nope]", "runtime.num_cpus=1"])
        print("RC", rc, "RAY_UP", ray.is_initialized())
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RC 2 RAY_UP False" in out.stdout, (out.stdout, out.stderr[-3000:])
    assert "unknown extra 'nope'" in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
