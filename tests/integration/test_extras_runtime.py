"""A learner extra added through the registry alone runs in the real local runtime: its metrics reach
metrics.jsonl, its weights reach the env actors by version, its state is in the checkpoint and --resume restores it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distrl.cli import prepare_run
from distrl.learners.extras import EXTRAS, LearnerExtra, register_extra
from distrl.learners.learner import load_checkpoint_file
from distrl.logging import read_jsonl
from distrl.runtime.local import LocalRuntime

REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


class ObsPredictor(LearnerExtra):
    """Predicts the next observation from the current one; ships its weights to the actors."""

    def __init__(self, cfg, spec, agent):
        super().__init__()
        self.key = sorted(spec.obs)[0]
        n = int(torch.Size(spec.obs[self.key].shape).numel())
        self.head = torch.nn.Linear(n, n)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def loss(self, batch):
        x = batch.traj.obs[self.key].float().flatten(2)  # [T + 1, B, n]
        err = ((self.head(x[:-1]) - x[1:]) ** 2).mean()
        self.updates += 1
        return err, {"updates": float(self.updates)}

    def actor_weights(self):
        return self.head.state_dict()


@pytest.fixture
def obs_predictor():
    register_extra("test_obs_predictor", ObsPredictor)
    yield "test_obs_predictor"
    EXTRAS.pop("test_obs_predictor", None)


def test_an_extra_runs_in_the_local_runtime_and_resumes(tmp_path, obs_predictor, monkeypatch):
    over = [f"runtime.run_dir={tmp_path}", "runtime.run_name=x", "logging.wandb=disabled",
            "logging.progress=false", "runtime.total_env_steps=2000", f"learner.extras=[{obs_predictor}]"]
    cfg, run_dir, _ = prepare_run(MEMORY, over)

    received = []
    from distrl.actors.env_actor import EnvActor

    original = EnvActor.set_weights

    def spy(self, weights):
        original(self, weights)
        received.append((weights.version, self.policy_version, set(self.extra_weights)))

    monkeypatch.setattr(EnvActor, "set_weights", spy)
    LocalRuntime(cfg, run_dir).train()
    assert received and all(v == pv and names == {obs_predictor} for v, pv, names in received)
    assert received[-1][0] > 0

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert any(f"extras/{obs_predictor}/loss" in r for r in rows)
    state = load_checkpoint_file(run_dir / "checkpoints/learner.pt")
    n = int(state["extras"][obs_predictor]["updates"])
    assert n == state["version"] > 0

    cfg2, run_dir2, _ = prepare_run(None, ["runtime.total_env_steps=3000"], resume=run_dir)
    LocalRuntime(cfg2, run_dir2, resume=True).train()
    after = load_checkpoint_file(run_dir / "checkpoints/learner.pt")
    assert int(after["extras"][obs_predictor]["updates"]) == after["version"] > n
