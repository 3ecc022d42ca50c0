"""`ray start --head` on loopback (token auth), `ray job submit -- distrl train ...`, wandb offline run appears.

Runs its own head node on private ports and temp dir, so it never touches the session's `ray_cluster` fixture,
and stops only the processes it started (never `ray stop`, which kills every Ray process on the host).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distrl.logging import read_jsonl

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ray_job_submit_runs_distrl_train(tmp_path):
    ray_bin = BIN / "ray"
    assert ray_bin.exists(), f"no ray CLI next to {sys.executable}: installing distrl (ray[default]) puts it there"
    temp_dir = Path(f"/tmp/rayjob_{os.getpid()}")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(ray_bin), "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                   timeout=60)
    head_log = tmp_path / "head.log"
    with open(head_log, "w") as log:
        head = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", "--port", "6390", "--node-ip-address", "127.0.0.1",
             "--dashboard-host", "127.0.0.1", "--dashboard-port", "8275", "--ray-client-server-port", "6391",
             "--dashboard-agent-listen-port", "52395", "--num-cpus", "3", "--temp-dir", str(temp_dir),
             "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    run_dir = tmp_path / "runs"
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in head_log.read_text():
            assert head.poll() is None, head_log.read_text()
            assert time.monotonic() < deadline, "ray head did not start in 120 s:\n" + head_log.read_text()
            time.sleep(1)
        job = subprocess.run(
            [str(ray_bin), "job", "submit", "--address", "http://127.0.0.1:8275", "--working-dir", str(REPO),
             "--", "distrl", "train", "configs/fake_memory.yaml", f"runtime.run_dir={run_dir}",
             "runtime.run_name=job", "runtime.total_env_steps=4000", "logging.wandb=offline",
             "logging.progress=false", "logging.log_every_s=1"],
            env=env, capture_output=True, text=True, timeout=400,
        )
        assert job.returncode == 0, f"job failed:\n{job.stdout[-4000:]}\n{job.stderr[-4000:]}"
        assert "succeeded" in job.stdout
        rows = read_jsonl(run_dir / "job/metrics.jsonl")
        assert rows[-1]["charts/env_steps"] >= 4000
        offline = list((run_dir / "job").glob("wandb/offline-run-*/run-*.wandb"))
        assert offline and offline[0].stat().st_size > 0, sorted(p.name for p in (run_dir / "job").rglob("*"))
        assert (run_dir / "job/checkpoints/learner.pt").is_file()
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
