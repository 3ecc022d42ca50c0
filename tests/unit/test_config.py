"""Config loading: types, unknown keys, includes, overrides, validation, fingerprints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from distrl.cli import _hoist_flags, _split_overrides, prepare_run
from distrl.config import ConfigError, ExperimentConfig, config_from_dict, load_config, quickstart_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_a_valid_runnable_config():
    cfg = load_config()
    assert cfg == ExperimentConfig().validate()
    assert cfg.env.name == "MiniHack-Room-5x5-v0"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.sequence.total >= cfg.sequence.period


def test_defaults_yaml_and_quickstart_yaml_equal_what_they_write_out():
    assert load_config(REPO / "configs/defaults.yaml") == load_config()
    quick = quickstart_config()
    assert load_config(REPO / "configs/quickstart.yaml") == quick
    assert (quick.model.encoder, quick.model.hidden_size, quick.env.observation_keys) == (
        "nethack_small", 128, ("glyphs_crop", "blstats"))
    # only the model, the batch size, replay compression and the evaluation period differ from the defaults;
    # overrides go on top
    defaults = load_config()
    assert quick.learner.batch_size == 8 and quick.replay.compress_obs
    assert dataclasses.replace(quick, env=defaults.env, model=defaults.model, eval=defaults.eval,
                               replay=dataclasses.replace(quick.replay, compress_obs=False),
                               learner=dataclasses.replace(quick.learner, batch_size=defaults.learner.batch_size)
                               ) == defaults
    assert quickstart_config(["model.hidden_size=64"]).model.hidden_size == 64
    with pytest.raises(ConfigError, match=r"model\.encoder: 'nope'"):
        quickstart_config(["model.encoder=nope"])


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("learner:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"learner\.lrr.*bad\.yaml"):
        load_config(p)


def test_wrong_type_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("learner:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"learner\.batch_size.*integer.*bad\.yaml"):
        load_config(p)


def test_bad_literal_is_refused():
    with pytest.raises(ConfigError, match=r"runtime\.mode"):
        load_config(None, ["runtime.mode=cluster"])


def test_inconsistent_pair_is_refused():
    with pytest.raises(ConfigError, match=r"sequence\.period"):
        load_config(None, ["sequence.period=100", "sequence.length=40"])
    with pytest.raises(ConfigError, match="min_size"):
        load_config(None, ["replay.min_size=10000", "replay.capacity=100"])


def test_include_and_override_precedence(tmp_path):
    (tmp_path / "base.yaml").write_text("learner:\n  lr: 1.0e-3\n  batch_size: 8\n")
    (tmp_path / "exp.yaml").write_text("include: base.yaml\nlearner:\n  batch_size: 16\n")
    cfg = load_config(tmp_path / "exp.yaml", ["learner.lr=3e-4"])
    assert cfg.learner.batch_size == 16 and cfg.learner.lr == pytest.approx(3e-4)


def test_include_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.learner.lr = 1.0  # type: ignore[misc]


def test_round_trip_through_dict_and_fingerprint():
    cfg = load_config(None, ["learner.lr=1e-3", "env.observation_keys=[glyphs, blstats]"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert again.env.observation_keys == ("glyphs", "blstats")
    assert cfg.fingerprint() == load_config(None, ["learner.lr=1e-3", "env.observation_keys=[glyphs, blstats]",
                                                   "runtime.total_env_steps=5"]).fingerprint()
    assert cfg.fingerprint() != load_config(None, ["learner.lr=2e-3"]).fingerprint()


def test_cli_override_forms():
    assert _split_overrides(["a.b=1", "--c.d", "2", "--e.f=3"]) == ["a.b=1", "c.d=2", "e.f=3"]
    assert _hoist_flags(["train", "x.yaml", "a.b=1", "--local", "--resume", "r"]) == [
        "train", "--local", "--resume", "r", "x.yaml", "a.b=1"]


def test_prepare_run_refuses_existing_run_and_mismatched_resume(tmp_path):
    over = [f"runtime.run_dir={tmp_path}", "runtime.run_name=r1"]
    cfg, run_dir, resuming = prepare_run(None, over)
    assert not resuming and (run_dir / "config.yaml").is_file()
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run(None, over)
    cfg2, run_dir2, resuming2 = prepare_run(None, ["runtime.total_env_steps=7"], resume=str(run_dir))
    assert resuming2 and run_dir2 == run_dir and cfg2.learner == cfg.learner
    assert cfg2.runtime.total_env_steps == 7
    with pytest.raises(ConfigError, match="differs"):
        prepare_run(str(REPO / "configs/pong.yaml"), [], resume=str(run_dir))


def test_advisories_name_an_online_fraction_the_rate_limit_cannot_keep():
    base = load_config(str(Path(__file__).resolve().parents[2] / "configs" / "minihack_multiroom.yaml"), [])
    assert base.advisories() == []  # online_fraction 0.5, samples_per_insert 2
    fresh_only = load_config(str(Path(__file__).resolve().parents[2] / "configs" / "minihack_multiroom.yaml"),
                             ["learner.online_fraction=1.0"])
    (advice,) = fresh_only.advisories()
    assert "replay.samples_per_insert=2" in advice and "replay.samples_per_insert=1" in advice
    unlimited = dataclasses.replace(fresh_only, replay=dataclasses.replace(fresh_only.replay, samples_per_insert=0.0))
    assert "no limit" in unlimited.advisories()[0]
    kept = dataclasses.replace(fresh_only, replay=dataclasses.replace(fresh_only.replay, samples_per_insert=1.0))
    assert kept.advisories() == []


def test_advisories_name_a_kl_cost_that_never_applies():
    path = str(Path(__file__).resolve().parents[2] / "configs" / "minihack_multiroom.yaml")
    assert load_config(path, ["learner.kl_cost=1.0"]).advisories() == []  # half of each batch is fresh
    (advice,) = load_config(path, ["learner.kl_cost=1.0", "learner.online_fraction=0"]).advisories()
    assert "learner.kl_cost=1" in advice and "learner.online_fraction=0" in advice


def test_proximal_settings_are_checked_and_a_clip_against_it_without_a_clip_is_advised_on():
    path = str(Path(__file__).resolve().parents[2] / "configs" / "minihack_multiroom.yaml")
    assert load_config(path, ["learner.ppo_clip=0.1", "learner.ppo_clip_against=proximal"]).advisories() == []
    (advice,) = load_config(path, ["learner.ppo_clip_against=proximal"]).advisories()
    assert "learner.ppo_clip_against=proximal" in advice and "learner.ppo_clip=0" in advice
    with pytest.raises(ConfigError, match=r"learner\.proximal_period"):
        load_config(path, ["learner.proximal_period=0"])
    with pytest.raises(ConfigError, match=r"learner\.proximal_kl_cost"):
        load_config(path, ["learner.proximal_kl_cost=-1"])
    with pytest.raises(ConfigError, match="ppo_clip_against"):
        load_config(path, ["learner.ppo_clip_against=target"])
