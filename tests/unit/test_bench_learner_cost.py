"""tools/bench/train_rate.py --learner-cost: the bonus presets' lines, and one update per bonus on the fake env."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))

import train_rate

from distrl.config import load_config


@pytest.mark.parametrize("name", ["none", "e3b", "e3b_rnd", "e3b_noveld", "counts"])
def test_bonus_lines_on_the_base_give_the_preset(name: str) -> None:
    """Every bonus is the base config plus its preset's bonus lines and nothing else (the cost of the bonus, not
    of e3b_rnd's proximal clip); rnd and noveld are the E3B presets with the episodic bonus off."""
    preset = load_config(train_rate.ROOT / train_rate.BONUSES[name][0])
    got = load_config(train_rate.LEARNER_COST_BASE, train_rate.bonus_overrides(name))
    assert got.bonus == preset.bonus
    assert got.to_dict() | {"bonus": None} == load_config(train_rate.LEARNER_COST_BASE).to_dict() | {"bonus": None}
    rnd = load_config(train_rate.LEARNER_COST_BASE, train_rate.bonus_overrides("rnd")).bonus
    assert (rnd.episodic, rnd.glob) == ("none", "rnd")


def test_learner_cost_runs_one_update_per_bonus(capsys: pytest.CaptureFixture[str]) -> None:
    rc = train_rate.main(
        [
            "--learner-cost",
            "--config",
            str(train_rate.ROOT / "configs" / "fake_memory.yaml"),
            "--no-cpu-overrides",
            "--bonuses",
            "rnd,e3b,counts",
            "--distrl-set",
            "bonus.count_key=obs",
            "--fill",
            "16",
            "--updates",
            "1",
            "--learner-warmup",
            "0",
            "--rounds",
            "2",
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    rows = [x for x in lines if x["bench"] == "learner_cost"]
    summary = {x["bonus"]: x for x in lines if x["bench"] == "learner_cost_summary"}
    assert [(r["bonus"], r["round"]) for r in rows] == [
        ("none", 0),
        ("rnd", 0),
        ("e3b", 0),
        ("counts", 0),  # 'none' always comes first; round 2 reversed
        ("counts", 1),
        ("e3b", 1),
        ("rnd", 1),
        ("none", 1),
    ]
    assert all(r["updates"] == 1 and r["updates_per_s"] > 0 for r in rows)
    assert set(summary) == {"none", "rnd", "e3b", "counts"}
    assert summary["none"]["ratio_to_none"] == 1.0
    assert summary["rnd"]["extras"] == ["bonus", "duration"] and summary["rnd"]["extra_params"]["bonus"] > 0
    assert summary["e3b"]["extras"][:2] == ["e3b", "bonus"]
    assert summary["counts"]["bonus_config"] == {"episodic": "count", "glob": "count", "combine": "mult"}
    assert set(summary["rnd"]["extra_hook_ms"]) == {"bonus", "duration"}
    assert all(s["fill_sequences"] == 16 and len(s["ratio_to_none_rounds"]) == 2 for s in summary.values())
