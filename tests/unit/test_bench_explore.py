"""tools/bench/explore.py's collapse finder: a learnt policy that falls apart, read off a run's metrics rows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))

import explore


def _rows(success: list[float | None], entropy: list[float]) -> list[dict]:
    return [{"charts/wall_time_s": 60.0 * i, "charts/env_steps": 1000 * i, "charts/success_rate": s,
             "learner/entropy": e} for i, (s, e) in enumerate(zip(success, entropy))]


def test_collapses_start_at_the_last_high_row_and_end_when_back() -> None:
    rows = _rows([0.0, 0.5, 0.95, 0.92, 0.7, 0.2, 0.4, 0.93, 0.95, 0.3, 0.1],
                 [2.0, 1.8, 1.0, 1.0, 0.6, 0.4, 0.5, 0.9, 1.0, 0.3, 0.2])
    found = explore.collapses(rows, before_s=60.0)
    assert [(c["start_min"], c["end_min"], c["min_success"]) for c in found] == [(3.0, 7.0, 0.2), (8.0, None, 0.1)]
    first = found[0]
    assert first["start_steps"] == 3000
    assert first["before"] == {"learner/entropy": 1.0}  # rows at 2 and 3 min: the 60 s up to the start
    assert first["during"] == {"learner/entropy": 0.5}  # rows at 4, 5 and 6 min: 0.6, 0.4, 0.5
    assert found[1]["during"] == {"learner/entropy": 0.25}


def test_no_collapse_without_reaching_high_or_without_falling_below_low() -> None:
    assert explore.collapses(_rows([0.0, 0.4, 0.8, 0.3, 0.1], [1.0] * 5)) == []  # never at 0.9
    assert explore.collapses(_rows([0.9, 0.6, 0.95, 0.5, 1.0], [1.0] * 5)) == []  # dips, never below 0.5
    assert explore.collapses(_rows([None, 0.9, None, 0.1], [1.0] * 4))[0]["end_min"] is None  # unscored rows skipped


def test_report_takes_each_runs_budget_from_its_saved_config(tmp_path: Path) -> None:
    run = tmp_path / "e3b_rnd-seed0"
    run.mkdir()
    assert explore.recorded_minutes(run) is None  # no config: the caller's --minutes stands
    (run / "config.yaml").write_text("runtime:\n  max_wall_time_s: 450.0\n  seed: 0\n")
    assert explore.recorded_minutes(run) == 7.5
    (run / "config.yaml").write_text("runtime:\n  max_wall_time_s: 0.0\n")
    assert explore.recorded_minutes(run) is None  # 0: no budget


def test_summary_counts_seeds_within_the_goals_and_says_when_runs_were_shorter() -> None:
    def run(first: float | None, half: float | None, minutes: float) -> dict:
        return {"config": "e3b_rnd", "minutes": minutes, "final_success": 0.5, "env_steps": 1, "env_steps_per_s": 1.0,
                "first_success_min": first, "success_half_min": half}

    full = explore.summarise("e3b_rnd", [run(2.0, 12.0, 30), run(11.0, 31.0, 30), run(None, None, 30)])
    assert (full["above0_within_10min"], full["half_within_30min"]) == ("1/3", "1/3")
    short = explore.summarise("e3b_rnd", [run(0.4, 4.3, 7.5), run(None, None, 7.5)])
    assert (short["above0_within_10min"], short["half_within_30min"]) == ("1/2 (runs of 7.5 min)",) * 2
    # A 30-minute run stopped at 18 minutes counts as an 18-minute run.
    stopped = dict(run(2.0, None, 30), stopped_early_min=18.0)
    early = explore.summarise("e3b_rnd", [stopped, run(2.0, 12.0, 30)])
    assert early["minutes"] == 18.0 and early["half_within_30min"] == "1/2 (runs of 18 min)"


def test_a_run_stopped_before_its_budget_says_how_long_it_ran(tmp_path) -> None:
    import json

    def rows(end_s: float) -> str:
        return "\n".join(json.dumps({"charts/wall_time_s": t, "charts/env_steps": 100 * t,
                                      "charts/success_rate": 0.0}) for t in range(0, int(end_s) + 1, 30))

    (tmp_path / "metrics.jsonl").write_text(rows(18 * 60))
    early = explore.collect("e3b_rnd", 2, 30.0, 180.0, tmp_path, None)
    assert early is not None and early["stopped_early_min"] == 18.0
    (tmp_path / "metrics.jsonl").write_text(rows(30 * 60 - 20))  # ended within the slack: ran its budget
    full = explore.collect("e3b_rnd", 2, 30.0, 180.0, tmp_path, None)
    assert full is not None and "stopped_early_min" not in full


def test_every_preset_the_benchmark_names_loads_and_the_noreplay_one_trains_on_fresh_sequences() -> None:
    from distrl.config import load_config

    cfgs = {name: load_config(explore.ROOT / path) for name, path in explore.PRESETS.items()}
    fresh = cfgs["e3b_rnd_noreplay"]
    assert fresh.learner.online_fraction == 1.0 and fresh.replay.samples_per_insert == 1.0
    assert fresh.advisories() == []  # a learner that outpaces the actors is held back, not fed from replay
    assert fresh.bonus == cfgs["e3b_rnd"].bonus and fresh.model == cfgs["e3b_rnd"].model
