"""Bad input, fuzzed (seeded, bounded): mutated config files, corrupted and foreign checkpoints, misbehaving envs.

Each kind of input is mutated at random from a fixed seed, and every mutant must be refused the documented way:
a config through ``distrl train <file>`` with exit code 2, one ``distrl: config error`` line naming the key and
the file, and no traceback; a learner or replay-shard checkpoint with a CheckpointError, leaving what it was
loaded into exactly as it was (or, for a harmless bit flip, loading exactly the saved content); an env whose
step returns a wrong shape or dtype with a ValueError naming the env and the observation key.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from distrl import cli
from distrl.config import ConfigError, ExperimentConfig, ReplayConfig, load_config, to_plain
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.envs.fake import CountingEnv
from distrl.envs.vector import InlineVecEnv
from distrl.learners.learner import (
    Learner,
    LearnerCheckpointError,
    load_checkpoint_file,
    save_checkpoint_file,
    state_checksum,
)
from distrl.replay import CheckpointError, ReplayShard
from distrl.replay.testing import example_trajectory

# ---- configs --------------------------------------------------------------------------------------------------

BASE = to_plain(ExperimentConfig().to_dict())
"""Every section and key, with valid values (the defaults)."""

OUT_OF_RANGE: dict[str, list[Any]] = {
    "env.num_envs": [0, -3], "env.seed": [-1], "env.frame_skip": [0], "env.frame_stack": [-2],
    "env.sticky_action_prob": [1.5, -0.1], "env.image_size": [0], "env.max_episode_steps": [-1],
    "sequence.length": [0], "sequence.burn_in": [-1], "sequence.period": [0, 10_000],
    "replay.num_shards": [0], "replay.capacity": [0, 1], "replay.alpha": [-0.5, 3.0], "replay.beta_start": [2.0],
    "replay.beta_end": [-1.0], "replay.priority_eta": [1.5], "replay.min_size": [0, 10**9],
    "replay.epsilon": [-1e-3], "replay.samples_per_insert": [-1.0], "replay.max_inflight_inserts": [0],
    "replay.checkpoint_every_s": [-5.0], "learner.batch_size": [0], "learner.online_fraction": [1.5],
    "learner.lr": [0.0, -1e-3], "learner.discount": [1.01], "learner.grad_clip": [-1.0], "learner.clip_rho": [0.0],
    "learner.threads": [0], "learner.num_learners": [0], "learner.publish_every": [0],
    "learner.checkpoint_every": [-1], "learner.rmsprop_alpha": [1.2], "actor.num_actors": [0],
    "actor.weight_sync_every": [0], "actor.threads": [0], "actor.num_cpus": [-1.0],
    "runtime.total_env_steps": [0], "runtime.seed": [-7], "runtime.actor_restarts": [-1],
    "runtime.max_wall_time_s": [-1.0], "runtime.placement_timeout_s": [-1.0], "logging.log_every_s": [-1.0],
    "eval.episodes": [0], "eval.every_updates": [-1], "eval.max_steps": [0],
}
"""Values each key must refuse (one key at a time, everything else valid)."""


def _leaves() -> list[tuple[str, str, Any]]:
    return [(s, k, v) for s, sec in BASE.items() for k, v in sec.items()]


def _wrong_type(value: Any, rng: random.Random) -> Any:
    """A value of another type than ``value``'s that the loader must refuse for it."""
    if isinstance(value, bool):
        return rng.choice(["yes please", 3, 1.5, [True], {"a": 1}])
    if isinstance(value, int):
        return rng.choice(["many", 2.5, [1, 2], {"n": 1}, True])
    if isinstance(value, float):
        return rng.choice(["fast", [0.1], {"x": 1.0}, True])
    if isinstance(value, str):
        return rng.choice([17, 2.5, ["a", "b"], {"name": "x"}, True])
    if isinstance(value, list):
        return rng.choice([5, {"a": 1}, [1, [2]], [{"k": 1}]])
    raise AssertionError(f"no wrong type for {value!r}")


def _mutants(rng: random.Random, n: int) -> list[tuple[str, Any, str]]:
    """``n`` (kind, content, key that the error must name). Content is a dict (dumped as YAML) or raw bytes."""
    out: list[tuple[str, Any, str]] = []
    leaves = _leaves()
    ranged = sorted(OUT_OF_RANGE)
    while len(out) < n:
        kind = rng.choice(["unknown_key", "unknown_section", "wrong_type", "out_of_range", "non_finite",
                           "section_type", "bad_yaml", "binary", "top_level", "include"])
        d = copy.deepcopy(BASE)
        if kind == "unknown_key":
            section = rng.choice(sorted(d))
            name = rng.choice([k for _, k, _ in leaves]) + rng.choice(["_", "s", "x", "2"])
            if name in d[section]:
                continue
            d[section][name] = rng.choice([1, "a", 0.5, None, [1]])
            out.append((kind, d, f"{section}.{name}"))
        elif kind == "unknown_section":
            name = rng.choice(["learners", "envs", "replay_buffer", "optim", "Runtime"])
            d[name] = {"x": 1}
            out.append((kind, d, name))
        elif kind == "wrong_type":
            section, key, value = rng.choice(leaves)
            if section == "bonus" and key in ("episodic", "glob"):  # Literal: tested by the string arm
                continue
            d[section][key] = _wrong_type(value, rng)
            out.append((kind, d, f"{section}.{key}"))
        elif kind == "out_of_range":
            key = rng.choice(ranged)
            section, name = key.split(".")
            d[section][name] = rng.choice(OUT_OF_RANGE[key])
            out.append((kind, d, key))
        elif kind == "non_finite":
            section, key, value = rng.choice([x for x in leaves if isinstance(x[2], float)])
            d[section][key] = rng.choice([float("nan"), float("inf"), float("-inf")])
            out.append((kind, d, f"{section}.{key}"))
        elif kind == "section_type":
            section = rng.choice(sorted(d))
            d[section] = rng.choice([None, 3, "fast", [1, 2], True])
            out.append((kind, d, section))
        elif kind == "bad_yaml":
            text = yaml.safe_dump(d, sort_keys=False)
            lines = text.splitlines()
            i = rng.randrange(1, len(lines))
            breakage = rng.choice(["  bad: [1, 2", "\tindented: 1", "key: {a: 1", ": no key", "- list: in map",
                                   "x: 'open", "  lr: 1\n lr: 2"])
            lines.insert(i, breakage)
            out.append((kind, ("\n".join(lines) + "\n").encode(), ""))
        elif kind == "binary":
            raw = bytearray(rng.randbytes(rng.randrange(1, 200)))
            raw[rng.randrange(len(raw))] = 0xFF  # never valid UTF-8
            out.append((kind, bytes(raw), ""))
        elif kind == "top_level":
            out.append((kind, rng.choice([[1, 2], "just text", 42, [{"env": {}}]]), ""))
        else:  # include: missing file, wrong type, a cycle
            choice = rng.choice(["missing", "type", "cycle"])
            d["include"] = {"missing": ["no_such_file.yaml"], "type": [3], "cycle": ["SELF"]}[choice]
            out.append((kind, d, "include" if choice == "type" else ""))
    return out


def _write(path: Path, content: Any) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
        return
    if isinstance(content, dict) and content.get("include") == ["SELF"]:
        content = {**content, "include": [path.name]}
    path.write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True))


@pytest.fixture
def no_training(monkeypatch):
    """A mutant that is accepted would start a run: fail instead."""
    import distrl.runtime.local as local
    import distrl.runtime.ray_app as ray_app

    class Refuse:
        def __init__(self, *a, **k):
            raise AssertionError("a mutated config was accepted")

    monkeypatch.setattr(local, "LocalRuntime", Refuse)
    monkeypatch.setattr(ray_app, "RayRuntime", Refuse)


def test_mutated_config_files_fail_with_key_and_file_and_no_traceback(tmp_path, capsys, no_training, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runtime.run_dir defaults to ./runs (no override: it would mask mutations)
    rng = random.Random(20261202)
    mutants = _mutants(rng, 240)
    kinds = {k for k, _, _ in mutants}
    assert len(kinds) == 10, kinds  # every kind of mutation was drawn
    for i, (kind, content, key) in enumerate(mutants):
        path = tmp_path / f"mutant_{i:03d}_{kind}.yaml"
        _write(path, content)
        rc = cli.main(["train", str(path)])
        err = capsys.readouterr().err
        where = f"mutant {i} ({kind}, key {key!r}): {err!r}"
        assert rc == 2, where
        assert err.startswith("distrl: config error:") and "Traceback" not in err, where
        assert path.name in err, where
        if key:
            assert key in err, where
    assert not (tmp_path / "runs").exists()  # nothing was started, not even a run directory


def test_a_bad_value_in_an_included_file_names_that_file(tmp_path, capsys, no_training):
    (tmp_path / "base.yaml").write_text("learner:\n  lr: fast\n")
    (tmp_path / "exp.yaml").write_text("include: [base.yaml]\nenv:\n  num_envs: 4\n")
    assert cli.main(["train", str(tmp_path / "exp.yaml"), "--local"]) == 2
    err = capsys.readouterr().err
    assert "learner.lr" in err and "base.yaml" in err and "Traceback" not in err


def test_mutated_overrides_name_the_key_and_the_command_line(tmp_path, capsys, no_training):
    rng = random.Random(7)
    leaves = _leaves()
    for _ in range(60):
        section, key, value = rng.choice(leaves)
        bad = rng.choice(["[1, 2", "{a: 1}", "[1, [2]]"] if not isinstance(value, str) else ["{a: 1}", "[1, [2]]"])
        if isinstance(value, list):
            bad = "{a: 1}"
        rc = cli.main(["train", "--local", f"runtime.run_dir={tmp_path / 'runs'}", f"{section}.{key}={bad}"])
        err = capsys.readouterr().err
        assert rc == 2 and f"{section}.{key}" in err and "command line" in err and "Traceback" not in err, err
    rc = cli.main(["train", "--local", "learner.lr=-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "learner.lr" in err and "command-line overrides" in err, err


def test_every_documented_bound_is_enforced():
    # Each entry of OUT_OF_RANGE is refused on its own (the fuzz above samples them; this covers them all).
    for key, values in OUT_OF_RANGE.items():
        for v in values:
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                load_config(None, [f"{key}={v}"])


# ---- learner checkpoints --------------------------------------------------------------------------------------

SPEC = EnvSpec(name="fake:test", obs={"x": ArraySpec((3,), np.dtype(np.float32))}, num_actions=4, family="fake")


def _learner(*over: str) -> Learner:
    cfg = load_config(None, ["model.encoder=mlp", "model.hidden_size=8", "model.core=identity", "sequence.length=4",
                             "sequence.period=4", "learner.batch_size=2", "replay.min_size=2", *over])
    return Learner(cfg, SPEC, device="cpu")


def _trained_learner() -> Learner:
    from distrl.replay.testing import random_trajectory
    from distrl.types import ReplaySample

    learner = _learner()
    traj = random_trajectory(4, 2, num_actions=4, obs={"x": ((3,), np.float32)},
                             core_state=learner.agent.initial_state(2), seed=1)
    learner.step(ReplaySample(traj=traj, keys=torch.arange(2), shard_ids=torch.zeros(2, dtype=torch.int64),
                              weights=torch.ones(2), probs=torch.full((2,), 0.5, dtype=torch.float64),
                              fresh=torch.ones(2, dtype=torch.bool)))
    return learner


def _learner_fingerprint(learner: Learner) -> int:
    return state_checksum({k: v for k, v in learner.state_dict().items()})


def _foreign_learner_files(rng: random.Random, tmp: Path) -> list[tuple[str, bytes]]:
    """Files that are not a checkpoint this learner can take, each with a name saying what it is. The first ones
    are well-formed, checksummed distrl checkpoints whose content does not fit: the learner must refuse them
    after (for the optimizer case) its model was already loaded, and put everything back."""
    ok = load_checkpoint_file(tmp / "good.pt")
    out = []

    def checksummed(state: dict[str, Any]) -> bytes:
        save_checkpoint_file(state, tmp / "foreign.pt")
        return (tmp / "foreign.pt").read_bytes()

    def saved(obj: Any) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    out.append(("wrong_model_shapes", checksummed({**ok, "model": {k: torch.zeros(1) for k in ok["model"]}})))
    out.append(("missing_model_key", checksummed({**ok, "model": dict(list(ok["model"].items())[1:])})))
    bad_opt = copy.deepcopy(ok)
    next(iter(bad_opt["optimizer"]["state"].values()))["exp_avg"] = torch.zeros(99)
    out.append(("bad_optimizer_state", checksummed(bad_opt)))
    bad_groups = copy.deepcopy(ok)
    bad_groups["optimizer"]["param_groups"][0]["params"] = [0]
    out.append(("bad_optimizer_groups", checksummed(bad_groups)))
    out.append(("bad_counter", checksummed({**ok, "version": "seven"})))
    out.append(("negative_counter", checksummed({**ok, "env_steps": -5})))
    out.append(("other_extras", checksummed({**ok, "extras": {"rnd": {}}})))
    out.append(("other_schema", checksummed({**ok, "schema": 99})))
    out.append(("random_tensors", saved({"a": torch.randn(3), "b": [1, 2]})))
    out.append(("model_only", saved({"model": {"w": torch.zeros(2)}})))
    out.append(("unknown_entry", saved({**ok, "surprise": 1})))
    out.append(("not_a_dict", saved([1, 2, 3])))
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    out.append(("zip_of_text", zbuf.getvalue()))

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp / "victim"),))

    out.append(("pickle_with_code", pickle.dumps({"model": Evil()})))
    out.append(("random_bytes", rng.randbytes(300)))
    out.append(("empty", b""))
    out.append(("json", json.dumps({"model": {}}).encode()))
    return out


def test_corrupt_and_foreign_learner_checkpoints_are_refused_and_load_nothing(tmp_path):
    rng = random.Random(11)
    src = _trained_learner()
    src.save_checkpoint(tmp_path / "good.pt", extra={"env_steps": 8})
    good = (tmp_path / "good.pt").read_bytes()
    saved = _learner_fingerprint(src)
    target = _learner()
    initial = copy.deepcopy(target.state_dict())
    before = _learner_fingerprint(target)
    (tmp_path / "victim").mkdir()
    cases: list[tuple[str, bytes]] = []
    for _ in range(40):
        cut = rng.randrange(len(good))
        cases.append((f"truncated@{cut}", good[:cut]))
    for _ in range(150):
        b = bytearray(good)
        at = rng.randrange(len(b))
        b[at] ^= 1 << rng.randrange(8)
        cases.append((f"bitflip@{at}", bytes(b)))
    cases += _foreign_learner_files(rng, tmp_path)
    outcomes = {"refused": 0, "loaded_intact": 0}
    for name, data in cases:
        path = tmp_path / "ck.pt"
        path.write_bytes(data)
        try:
            target.load_checkpoint(path)
        except (LearnerCheckpointError, ConfigError) as e:  # ConfigError: a flip in the stored fingerprint
            assert str(path) in str(e), (name, e)
            assert _learner_fingerprint(target) == before, f"{name}: refused but loaded partly"
            outcomes["refused"] += 1
            continue
        # A flip in bytes the content does not depend on (zip padding, names) is harmless: the exact content.
        assert name.startswith("bitflip"), f"{name}: a foreign file was accepted"
        assert _learner_fingerprint(target) == saved, f"{name}: accepted with altered content"
        target.load_state_dict(copy.deepcopy(initial))  # back to the untouched learner for the next case
        outcomes["loaded_intact"] += 1
    assert (tmp_path / "victim").is_dir()  # the pickle's code never ran
    assert outcomes["refused"] > 0.5 * len(cases), outcomes
    target.load_checkpoint(tmp_path / "good.pt")  # the good file still loads, after all that
    assert _learner_fingerprint(target) == saved


def test_resume_with_a_corrupt_learner_checkpoint_exits_cleanly(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = load_config(None, ["env.name=fake:counting", "runtime.mode=local", "model.encoder=mlp"])
    (run / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg.to_dict())))
    (run / "checkpoints" / "learner.pt").write_bytes(b"PK\x03\x04 truncated")
    rc = cli.main(["train", "--resume", str(run)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("distrl: checkpoint error:") and "learner.pt" in err, err
    assert "Traceback" not in err


# ---- replay shard checkpoints ---------------------------------------------------------------------------------

SHARD_CFG = ReplayConfig(capacity=12, min_size=2, samples_per_insert=0.0)
SHARD_CFGS = {"plain": SHARD_CFG, "compressed": dataclasses.replace(SHARD_CFG, compress_obs=True)}


def _filled_shard(seed: int = 0, cfg: ReplayConfig = SHARD_CFG) -> ReplayShard:
    shard = ReplayShard(cfg, shard_id=1, seed=seed)
    for i in range(3):
        shard.insert(example_trajectory(B=4, start=4 * i + seed, policy_version=i))
    return shard


def _shard_content(shard: ReplayShard, where: Path) -> dict[str, Any]:
    """Everything a shard holds (its own checkpoint, read back raw)."""
    if where.exists():
        shutil.rmtree(where)
    shard.save(where, fsync=False)
    manifest = json.loads((where / "manifest.json").read_text())
    manifest.pop("manifest_crc32", None)
    return {"manifest": manifest, **{p.name: p.read_bytes() for p in sorted(where.glob("*.npy"))}}


def _corrupt_shard_dir(rng: random.Random, good: Path, dst: Path) -> str:
    """Copy ``good`` to ``dst`` and damage it one way; returns what was done."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(good, dst)
    files = sorted(p for p in dst.iterdir())
    f = rng.choice(files)
    kind = rng.choice(["truncate", "bitflip", "bitflip", "bitflip", "delete", "foreign_npy", "object_npy",
                       "foreign_manifest", "garbage", "swap"])
    data = f.read_bytes()
    if kind == "truncate":
        f.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "bitflip":
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(b))
    elif kind == "delete":
        f.unlink()
    elif kind == "foreign_npy":
        np.save(dst / "a000.npy", rng.choice([np.zeros(12), np.ones((3, 4), dtype=np.int8), np.arange(5)]))
    elif kind == "object_npy":
        with open(dst / "a001.npy", "wb") as fh:
            np.save(fh, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "foreign_manifest":
        m = json.loads((dst / "manifest.json").read_text())
        m.pop("manifest_crc32")  # an older or hand-made manifest: no checksum, so its fields must be checked
        target = rng.choice(["counters", "files", "capacity", "schema", "file_name"])
        if target == "counters":
            m["counters"]["size"] = rng.choice([[1], "many", -1, 10**6, None])
        elif target == "files":
            entry = next(iter(m["files"].values()))
            entry[rng.choice(["shape", "dtype", "file_size", "crc32"])] = rng.choice([None, "x", [[]], {"a": 1}])
        elif target == "capacity":
            m["capacity"] = rng.choice(["12x", None, 13])
        elif target == "schema":
            m["schema"] = rng.choice([{"leaves": "x"}, [1], "s"])
        else:
            next(iter(m["files"].values()))["file"] = "../../manifest.json"
        (dst / "manifest.json").write_text(json.dumps(m))
        kind += ":" + target
    elif kind == "garbage":
        f.write_bytes(rng.randbytes(rng.randrange(0, 400)))
    else:  # two array files exchanged
        a, b = dst / "a000.npy", dst / "a001.npy"
        da, db = a.read_bytes(), b.read_bytes()
        a.write_bytes(db)
        b.write_bytes(da)
    return f"{kind} {f.name}"


@pytest.mark.parametrize("layout", sorted(SHARD_CFGS))
def test_corrupt_and_foreign_replay_checkpoints_are_refused_and_load_nothing(tmp_path, layout):
    """Plain shards, and shards whose observations are zlib blobs (replay.compress_obs: each observation leaf
    stored as its blobs back to back plus an offsets table)."""
    cfg = SHARD_CFGS[layout]
    rng = random.Random(5)
    good = _filled_shard(cfg=cfg).save(tmp_path / "good")
    saved = _shard_content(ReplayShard.load(good, cfg), tmp_path / "probe")
    target = _filled_shard(seed=1, cfg=cfg)  # holds other data: a refused restore must leave it as it is
    before = _shard_content(target, tmp_path / "probe")
    refused = 0
    for i in range(120):
        what = _corrupt_shard_dir(rng, good, tmp_path / "bad")
        try:
            target.restore(tmp_path / "bad")
        except CheckpointError as e:
            assert "bad" in str(e), (what, e)
            assert _shard_content(target, tmp_path / "probe") == before, f"{what}: refused but loaded partly"
            refused += 1
            continue
        assert _shard_content(target, tmp_path / "probe") == saved, f"case {i} ({what}): accepted, altered"
        target = _filled_shard(seed=1, cfg=cfg)
    assert refused > 0.6 * 120, refused


# ---- envs that return the wrong thing -------------------------------------------------------------------------


class _Misbehaving(CountingEnv):
    """A CountingEnv whose ``step`` number ``at`` returns a bad value for ``what``."""

    def __init__(self, what: str, at: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.what, self.at, self.calls = what, at, 0

    def step(self, action: Any):
        obs, reward, te, tr, info = super().step(action)
        self.calls += 1
        if self.calls < self.at:
            return obs, reward, te, tr, info
        if self.what == "shape":
            obs = {**obs, "count": np.zeros((1, 1), dtype=obs["count"].dtype)}
        elif self.what == "broadcastable_shape":
            obs = {**obs, "last_action": np.zeros((), dtype=obs["last_action"].dtype)}
        elif self.what == "dtype":
            obs = {**obs, "count": obs["count"].astype(np.float64)}
        elif self.what == "missing_key":
            obs = {k: v for k, v in obs.items() if k != "count"}
        elif self.what == "reward":
            reward = np.array([reward, reward])
        elif self.what == "flag":
            te = "no"
        elif self.what == "info":
            info = [info]
        return obs, reward, te, tr, info


@pytest.mark.parametrize("what,key", [("shape", "count"), ("broadcastable_shape", "last_action"),
                                      ("dtype", "count"), ("missing_key", "count"), ("reward", "reward"),
                                      ("flag", "terminated"), ("info", "info")])
def test_an_env_step_with_wrong_shapes_or_dtypes_is_named_with_the_key(what, key):
    from distrl.config import EnvConfig

    cfg = EnvConfig(name="fake:counting", fake_episode_len=50)
    venv = InlineVecEnv(cfg, 2, 0, env_fn=lambda c, s: _Misbehaving(what, 1, episode_len=50, seed=s))
    venv.reset()
    try:
        with pytest.raises((ValueError, KeyError), match=rf"fake:counting.*{key}"):
            venv.step(np.zeros(2, dtype=np.int64))
    finally:
        venv.close()


def test_the_step_check_runs_once_per_instance_not_every_step():
    # A well-behaved env passes; the check then stays off for that instance until a new one is swapped in.
    from distrl.config import EnvConfig

    venv = InlineVecEnv(EnvConfig(name="fake:counting", fake_episode_len=3), 2, 0)
    venv.reset()
    runner = venv._runner
    venv.step(np.zeros(2, dtype=np.int64))
    assert runner.step_checked == runner.envs
    venv.step(np.zeros(2, dtype=np.int64))
    assert runner.step_checked == runner.envs
    venv.close()
