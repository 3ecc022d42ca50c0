"""The processes that do not need torch never load it: a run's driver, its replay shards and the env actors that
act through NumPy kernels (each would cost about 140 MB of PSS and a second of start-up CPU; BENCHMARKS.md,
"Processes that do not need torch do not load it")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distrl.config import ReplayConfig
from distrl.replay import ReplaySampler, insert_with_retry
from distrl.replay.testing import example_trajectory
from distrl.runtime.ray_replay import make_ray_shard, ray_shard_clients

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]

IMPORTS = "import distrl.cli, distrl.runtime.ray_app, distrl.runtime.ray_replay, distrl.replay.shard"


def test_the_driver_and_shard_modules_import_without_torch():
    code = f"import sys; {IMPORTS}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_whole_run_drives_without_torch(ray_cluster, tmp_path):
    """``distrl train`` in a process where importing torch fails: set-up, training, the learner checkpoints
    (written by the driver from the learner's bytes) and the final evaluation all run."""
    address = ray_cluster.get_runtime_context().gcs_address
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch in this process raises ImportError\n"
        "from distrl.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [str(REPO / "configs/fake_memory.yaml"), "--address", address, f"runtime.run_dir={tmp_path}",
            "runtime.run_name=run", "runtime.total_env_steps=3000", "learner.checkpoint_every=20",
            "logging.wandb=disabled", "logging.progress=false"]
    # the address is loopback: the joining driver must not swap it for the host's (as init_local_ray does)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    out = subprocess.run([sys.executable, "-c", code, "train", *args], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] >= 3000 and summary["eval"]["episodes"] > 0
    assert (tmp_path / "run/checkpoints/learner.pt").is_file()

    from distrl.learners.learner import load_checkpoint_file  # the driver's bytes make a valid checkpoint

    assert load_checkpoint_file(tmp_path / "run/checkpoints/learner.pt")["version"] == summary["learner_version"]


def test_a_shard_actor_stores_samples_and_saves_without_torch(ray_cluster, tmp_path):
    cfg = ReplayConfig(capacity=64, min_size=8, samples_per_insert=0.0)
    handle = make_ray_shard(cfg, 0, num_cpus=0.25, seed=0)
    try:
        client = ray_shard_clients([handle])[0]
        for i in range(4):  # torch trajectories from this (torch) process: they travel as NumPy leaves
            insert_with_retry(client, example_trajectory(B=4, start=4 * i), timeout=60.0)
        sampler = ReplaySampler([client], cfg, batch_size=8, prefetch=1, seed=0)
        batch = sampler.next_batch(timeout=60.0)
        sampler.update_priorities(batch.keys, batch.shard_ids, batch.weights + 1.0)
        sampler.flush_updates(timeout=60.0)
        sampler.close()
        client.save(tmp_path / "shard0")
        assert ray_cluster.get(handle.stats.remote()).size == 16
        assert ray_cluster.get(handle.torch_loaded.remote()) is False
    finally:
        ray_cluster.kill(handle)


def test_an_env_actor_on_numpy_kernels_runs_without_torch(ray_cluster):
    """A Ray env actor fed by a weight store, with a model the NumPy kernels cover (fake:memory's mlp + lstm) and
    no episodic bonus, pulls the weights (published as NumPy), steps, inserts sequences into a shard, and never
    loads torch; with actor.inference=torch the same actor does."""
    from distrl.config import load_config
    from distrl.envs.registry import env_spec
    from distrl.models import build_agent
    from distrl.runtime.ray_env_actor import start_env_actor
    from distrl.runtime.weights import RayWeightStore
    from distrl.types import PolicyWeights, as_arrays

    for inference, loaded in (("auto", False), ("torch", True)):
        cfg = load_config(REPO / "configs/fake_memory.yaml", ["env.num_envs=4", f"actor.inference={inference}"])
        shard = make_ray_shard(cfg.replay, 0, num_cpus=0.25, seed=0)
        store = ray_cluster.remote(num_cpus=0)(RayWeightStore).remote()
        agent = build_agent(cfg.model, env_spec(cfg.env))
        weights = PolicyWeights(0, as_arrays(agent.state_dict()))
        ray_cluster.get(store.publish.remote(0, [ray_cluster.put(weights)]))
        actor = start_env_actor(cfg, 0, [shard], store, num_cpus=0.25, max_sequences=3)
        try:
            report = ray_cluster.get(actor.run_ref, timeout=120)
            assert report.sequences == 3 and report.policy_version == 0
            assert ray_cluster.get(actor.handle.torch_loaded.remote()) is loaded, inference
            assert ray_cluster.get(shard.stats.remote()).size == 3 * 4
        finally:
            ray_cluster.kill(actor.handle)
            ray_cluster.kill(shard)
            ray_cluster.kill(store)
