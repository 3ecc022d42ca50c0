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
