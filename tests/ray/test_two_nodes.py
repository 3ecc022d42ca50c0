"""A real two-node Ray cluster on one machine: a head labelled like clusters/*.yaml's head and learner nodes
(``learner``, ``replay_shard``) and a second ``ray start --address`` node with its own CPUs labelled
``env_actor``. ``distrl train`` joins it; the env actors must run on the worker node, the learner and the replay
shard on the head, and the run's outputs must be in its run location.

Token auth, private ports and temp dirs, a private HOME (for ~/.ray/auth_token): it never touches the session's
``ray_cluster`` fixture or other Ray processes on the host, and stops only the processes it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import stop_group

from distrl.logging import read_jsonl

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD_PORT = 6398, 8279


def _start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log_path.read_text():
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, f"ray start did not finish in 180 s:\n{log_path.read_text()}"
        time.sleep(1)
    return proc


def _ray_list(what: str, env: dict[str, str]) -> list[dict]:
    out = subprocess.run([str(BIN / "ray"), "list", what, "--address", f"http://127.0.0.1:{DASHBOARD_PORT}",
                          "--detail", "--format", "json", "--limit", "1000"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.timeout(1200)
def test_two_node_cluster_places_by_label_and_keeps_outputs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "HOME": str(home), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                   timeout=60)
    head_tmp, worker_tmp = Path(f"/tmp/ray2n_head_{os.getpid()}"), Path(f"/tmp/ray2n_worker_{os.getpid()}")
    procs: list[subprocess.Popen] = []
    run_root = tmp_path / "shared_runs"  # one machine: its filesystem is the shared filesystem of both nodes
    try:
        procs.append(_start(
            ["--head", "--port", str(GCS_PORT), "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(DASHBOARD_PORT), "--ray-client-server-port", "6399",
             "--dashboard-agent-listen-port", "52401", "--num-cpus", "2",
             "--resources", json.dumps({"learner": 1, "replay_shard": 1}), "--temp-dir", str(head_tmp),
             "--disable-usage-stats"], env, tmp_path / "head.log"))
        procs.append(_start(
            ["--address", f"127.0.0.1:{GCS_PORT}", "--node-ip-address", "127.0.0.1",
             "--dashboard-agent-listen-port", "52403", "--num-cpus", "2",
             "--resources", json.dumps({"env_actor": 1}), "--temp-dir", str(worker_tmp),
             "--disable-usage-stats"], env, tmp_path / "worker.log"))
        nodes = [n for n in _ray_list("nodes", env) if n["state"] == "ALIVE"]
        assert len(nodes) == 2, nodes
        worker_id = next(n["node_id"] for n in nodes if "env_actor" in n["resources_total"])
        head_id = next(n["node_id"] for n in nodes if "learner" in n["resources_total"])
        run = subprocess.run(
            [str(BIN / "distrl"), "train", str(REPO / "configs/fake_memory.yaml"),
             f"runtime.address=127.0.0.1:{GCS_PORT}", f"runtime.run_dir={run_root}", "runtime.run_name=two",
             "actor.num_actors=2", "runtime.total_env_steps=3000", "logging.wandb=offline",
             "logging.progress=false", "logging.log_every_s=1"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
        )
        assert run.returncode == 0, f"distrl train failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        run_dir = run_root / "two"
        assert summary["run_dir"] == str(run_dir) and f"distrl: run directory {run_dir}" in run.stdout
        assert summary["ray_resources"]["env_actor"]["resources"] == {"env_actor": 0.001}
        assert summary["ray_resources"]["learner"]["resources"] == {"learner": 0.001}
        actors = _ray_list("actors", env)
        where: dict[str, set[str]] = {}
        for a in actors:
            where.setdefault(a["class_name"], set()).add(a["node_id"])
        assert where.get("RayEnvActor") == {worker_id}, where
        assert where.get("RayLearner") == {head_id}, where
        assert where.get("StoredShard") == {head_id}, where
    finally:
        for p in reversed(procs):
            stop_group(p)
        shutil.rmtree(head_tmp, ignore_errors=True)
        shutil.rmtree(worker_tmp, ignore_errors=True)
    assert read_jsonl(run_dir / "metrics.jsonl")[-1]["charts/env_steps"] >= 3000
    assert (run_dir / "checkpoints/learner.pt").is_file()
    assert (run_dir / "replay/shard_0/manifest.json").is_file()
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
