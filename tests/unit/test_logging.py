"""Metric sinks: namespaces, JSONL/CSV round trips, episode aggregation, terminal progress, real wandb."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distrl.logging.progress as progress_module
from distrl.config import ExperimentConfig, LoggingConfig, RuntimeConfig
from distrl.logging import (
    AverageRate,
    CsvSink,
    EpisodeTracker,
    JsonlSink,
    MetricSink,
    MultiSink,
    ProgressSink,
    RateMeter,
    WandbSink,
    check_metrics,
    make_sinks,
    read_jsonl,
    read_wandb_records,
    resolve_wandb_mode,
)
from distrl.types import EpisodeStats

REPO = Path(__file__).resolve().parents[2]


def _cfg(wandb: str = "disabled", progress: bool = False, total: int = 1000) -> ExperimentConfig:
    return dataclasses.replace(
        ExperimentConfig(),
        logging=LoggingConfig(wandb=wandb, progress=progress, log_every_s=0.0),
        runtime=RuntimeConfig(total_env_steps=total),
    )


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---- validation ------------------------------------------------------------------------------------------


def test_check_metrics_accepts_namespaced_numbers():
    out = check_metrics(
        {"charts/episode_return": 1, "replay/shard0/size": torch.tensor(3.0), "learner/lr": 3e-4,
         "bonus/e3b_mean": True},
        step=10,
    )
    assert out == {"charts/episode_return": 1.0, "replay/shard0/size": 3.0, "learner/lr": 3e-4,
                   "bonus/e3b_mean": 1.0}
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize(
    "key", ["episode_return", "loss/policy", "Charts/x", "charts/", "/x", "charts/ x", "_step"]
)
def test_check_metrics_rejects_unnamespaced_keys(key):
    with pytest.raises(ValueError, match="not namespaced"):
        check_metrics({key: 1.0}, step=0)


@pytest.mark.parametrize("value", ["1.0", None, [1.0], torch.ones(2)])
def test_check_metrics_rejects_non_scalars(value):
    with pytest.raises(ValueError, match=r"charts/x.*real number"):
        check_metrics({"charts/x": value}, step=0)


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_check_metrics_rejects_bad_steps(step):
    with pytest.raises(ValueError, match="step"):
        check_metrics({"charts/x": 1.0}, step=step)


# ---- JSONL / CSV -----------------------------------------------------------------------------------------


def test_jsonl_round_trip_and_resume_appends(tmp_path):
    sink = JsonlSink(tmp_path)
    assert isinstance(sink, MetricSink)
    sink.log({"charts/episode_return": 0.5, "learner/updates": 2}, step=100)
    sink.log({"charts/episode_return": float("nan"), "replay/size": 7}, step=200)
    sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink.log({"charts/x": 1.0}, step=1)
    again = JsonlSink(tmp_path)  # a resumed run continues the same file
    again.log({"charts/episode_return": 1.0}, step=300)
    again.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 400, "ti')  # a writer killed mid-line
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [100, 200, 300]
    assert rows[0]["charts/episode_return"] == 0.5 and rows[0]["learner/updates"] == 2.0
    assert rows[1]["charts/episode_return"] is None  # NaN -> null: strict JSON
    assert rows[1]["replay/size"] == 7.0 and "learner/updates" not in rows[1]
    assert all(isinstance(r["time"], float) and r["time"] > 1e9 for r in rows)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[:3]:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_csv_sink_widens_header_and_resumes(tmp_path):
    sink = CsvSink(tmp_path)
    sink.log({"charts/sps": 10.0}, step=1)
    sink.log({"charts/sps": 20.0, "replay/size": 5}, step=2)  # new column: header widened
    sink.close()
    CsvSink(tmp_path).log({"replay/size": 6}, step=3)
    import csv

    with (tmp_path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "time", "charts/sps", "replay/size"]
    assert [(r["step"], r["charts/sps"], r["replay/size"]) for r in rows] == [
        ("1", "10.0", ""), ("2", "20.0", "5.0"), ("3", "", "6.0")
    ]


def test_multisink_validates_before_any_sink_writes(tmp_path):
    jsonl = JsonlSink(tmp_path)
    with MultiSink([jsonl]) as sinks:
        sinks.log({"charts/x": 1.0}, step=1)
        with pytest.raises(ValueError, match="not namespaced"):
            sinks.log({"charts/x": 2.0, "oops": 3.0}, step=2)
        assert sinks.find(JsonlSink) is jsonl and sinks.find(WandbSink) is None
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    assert jsonl._file is None  # closed on exit


# ---- episode aggregation ---------------------------------------------------------------------------------


def _ep(ret: float, length: int = 10, success: float | None = None, **extra: float) -> EpisodeStats:
    return EpisodeStats(actor_id=0, env_index=0, episode_return=ret, length=length, success=success,
                        extra=tuple(extra.items()))


def test_episode_tracker_sliding_window():
    tracker = EpisodeTracker(window=3)
    assert tracker.summary() == {}  # no made-up zeros before the first episode
    tracker.add([_ep(0.0, 5, success=0.0), _ep(1.0, 7)])
    s = tracker.summary()
    assert s["charts/episode_return"] == 0.5 and s["charts/episode_length"] == 6.0
    assert s["charts/success_rate"] == 0.0  # only episodes that define success count
    tracker.add([_ep(2.0, 9, success=1.0, spl=0.5), _ep(3.0, 11, success=1.0, spl=0.7)])
    s = tracker.summary()  # window keeps the last 3: returns 1, 2, 3
    assert len(tracker) == 3 and s["charts/episodes"] == 4.0
    assert s["charts/episode_return"] == 2.0 and s["charts/episode_length"] == 9.0
    assert s["charts/success_rate"] == 1.0
    assert math.isclose(s["charts/spl"], 0.6)
    check_metrics(s, step=0)  # everything it produces is a valid metric
    tracker.add([_ep(4.0), _ep(5.0), _ep(6.0)])
    assert "charts/success_rate" not in tracker.summary() and "charts/spl" not in tracker.summary()
    with pytest.raises(ValueError, match="window"):
        EpisodeTracker(window=0)


def test_rate_meter():
    meter = RateMeter()
    assert meter.update(0, now=10.0) is None
    assert meter.update(500, now=12.0) == 250.0
    assert meter.update(500, now=12.0) is None  # no time passed: no rate rather than a division by zero


# ---- terminal progress -----------------------------------------------------------------------------------


def test_progress_plain_lines_when_not_a_tty():
    out = io.StringIO()
    progress = ProgressSink(1000, rich=True, interval_s=3600.0, stream=out)
    assert not progress.use_rich
    first = {"charts/episode_return": 0.25, "charts/sps": 1234.0, "learner/updates_per_s": 2.5}
    progress.log(first, step=100)
    progress.log({"charts/episode_return": 0.75, "charts/success_rate": 0.5, "learner/updates": 10}, step=600)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the second log call falls inside the interval; close prints the final state
    assert lines[0] == "[distrl] 100/1,000 env steps (10.0%) | 1,234 steps/s | return 0.25 | 2.5 updates/s"
    assert lines[1].startswith("[distrl] 600/1,000 env steps (60.0%) |")
    assert "return 0.75 | success 0.50" in lines[1] and lines[1].endswith("| done")
    assert "\x1b[" not in out.getvalue()  # no terminal control codes in a log file


def test_average_rate_runs_from_the_first_update_to_the_latest():
    avg = AverageRate()
    assert avg.rate is None
    avg.update(100, now=10.0)
    assert avg.rate is None  # one point: no rate
    avg.update(600, now=15.0)
    avg.update(600, now=20.0)  # the counter stopped: the average falls, it does not drop to 0
    assert avg.rate == 50.0


def test_progress_final_line_shows_the_run_average_rates(monkeypatch):
    now = [10.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    progress = ProgressSink(2000, rich=False, interval_s=3600.0, stream=out)
    progress.log({"charts/sps": 80.0, "learner/updates": 2}, step=100)
    now[0] = 20.0
    progress.log({"charts/sps": 100.0, "learner/updates": 12}, step=1100)
    now[0] = 30.0  # the last report comes after the actors stopped: its current rate is 0
    progress.log({"charts/sps": 0.0, "learner/updates": 22}, step=1100)
    assert "| 0 steps/s |" in progress.line()
    progress.close()
    final = out.getvalue().splitlines()[-1]
    # (1100 - 100) steps and (22 - 2) updates over the 20 s between the first and the last report
    assert final == "[distrl] 1,100/2,000 env steps (55.0%) | 50 steps/s avg | return - | 1.0 updates/s avg | done"


def test_progress_disabled_gives_plain_lines_even_on_a_tty():
    out = _Tty()
    progress = ProgressSink(1000, rich=False, interval_s=0.0, stream=out)
    progress.log({"charts/episode_return": 1.0}, step=10)
    progress.log({"charts/episode_return": 1.0}, step=20)
    progress.close()
    assert not progress.use_rich
    assert out.getvalue().count("[distrl]") == 3 and "\x1b[" not in out.getvalue()


def test_progress_uses_rich_on_a_tty(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")
    out = _Tty()
    progress = ProgressSink(1000, rich=True, stream=out)
    assert progress.use_rich
    progress.log({"charts/episode_return": 0.5, "charts/sps": 99.0}, step=500)
    progress.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "\x1b[" in out.getvalue()  # drawn with terminal control codes
    assert "500/1,000 env steps" in text and "99 steps/s" in text and "return 0.5" in text
    assert "[distrl]" not in text  # not the plain-line format


# ---- TensorBoard -----------------------------------------------------------------------------------------


def test_tensorboard_sink_or_clear_error(tmp_path):
    from distrl.logging import TensorBoardSink

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"distrl\[tensorboard\]"):
            TensorBoardSink(tmp_path)
        return
    sink = TensorBoardSink(tmp_path)
    sink.log({"losses/policy": 0.5}, step=3)
    sink.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


# ---- wandb -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "env", "expect"),
    [
        ("offline", {"WANDB_API_KEY": "k"}, "offline"),
        ("online", {}, "online"),
        ("disabled", {"WANDB_API_KEY": "k"}, "disabled"),
        ("auto", {}, "offline"),
        ("auto", {"WANDB_API_KEY": "k"}, "online"),
        ("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),
        ("auto", {"WANDB_MODE": "dryrun"}, "offline"),
        ("auto", {"WANDB_MODE": "disabled"}, "disabled"),
    ],
)
def test_resolve_wandb_mode(setting, env, expect, tmp_path):
    env = {"NETRC": str(tmp_path / "none"), **env}
    assert resolve_wandb_mode(setting, env) == expect


def test_resolve_wandb_mode_reads_wandb_login_netrc(tmp_path):
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    netrc_file.chmod(0o600)
    assert resolve_wandb_mode("auto", {"NETRC": str(netrc_file)}) == "online"
    other = {"NETRC": str(netrc_file), "WANDB_BASE_URL": "https://wandb.example.com"}
    assert resolve_wandb_mode("auto", other) == "offline"  # a key for another host does not count
    with pytest.raises(ValueError, match=r"logging\.wandb"):
        resolve_wandb_mode("sometimes", {})


def _offline_run_file(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_wandb_offline_run_dir_keys_and_resume(tmp_path):
    """The real wandb library, offline: a sync-able run dir under the run dir with our keys and config."""
    run_dir = tmp_path / "my-run"
    sinks = make_sinks(_cfg(wandb="offline"), run_dir, stream=io.StringIO())
    wb = sinks.find(WandbSink)
    assert wb is not None and wb.mode == "offline"
    sinks.log({"charts/episode_return": 0.5, "learner/updates": 3}, step=100)
    sinks.log({"charts/episode_return": 0.75, "replay/size": 9}, step=200)
    sinks.close()

    files = _offline_run_file(run_dir)
    assert len(files) == 1 and files[0].stat().st_size > 0
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert files[0].name == f"run-{run_id}.wandb" and wb.local_dir == files[0].parent
    rec = read_wandb_records(files[0])
    hist = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rec["history"]]
    assert hist == [
        {"charts/episode_return": 0.5, "learner/updates": 3, "charts/env_steps": 100},
        {"charts/episode_return": 0.75, "replay/size": 9, "charts/env_steps": 200},
    ]
    assert rec["config"]["learner"]["lr"] == ExperimentConfig().learner.lr
    assert rec["config"]["logging"]["wandb"] == "offline"
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 2  # JSONL got the same rows

    # --resume: same run dir -> same wandb id, a second offline segment that `wandb sync` merges into one run
    sinks = make_sinks(_cfg(wandb="offline"), run_dir, stream=io.StringIO())
    sinks.log({"charts/episode_return": 1.0}, step=300)
    sinks.close()
    files = _offline_run_file(run_dir)
    assert len(files) == 2 and {f.name for f in files} == {f"run-{run_id}.wandb"}
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [100, 200, 300]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_online_failure_auto_falls_back_online_raises(tmp_path, monkeypatch):
    """No W&B server is reachable: 'auto' with a key warns and goes offline; explicit 'online' raises."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    with pytest.warns(RuntimeWarning, match="falling back to offline"):
        sink = WandbSink(tmp_path / "auto", mode="auto", init_timeout_s=2.0)
    assert sink.mode == "offline"
    sink.log({"charts/episode_return": 1.0}, step=5)
    sink.close()
    files = _offline_run_file(tmp_path / "auto")
    assert len(files) == 1
    assert read_wandb_records(files[0])["history"][0]["charts/episode_return"] == 1.0

    with pytest.raises(RuntimeError, match=r"(?s)wandb online init failed.*logging.wandb=offline"):
        WandbSink(tmp_path / "online", mode="online", init_timeout_s=2.0)


def test_make_sinks_without_wandb_or_progress(tmp_path):
    out = io.StringIO()
    sinks = make_sinks(_cfg(wandb="disabled"), tmp_path, stream=out)
    assert [type(s).__name__ for s in sinks.sinks] == ["JsonlSink", "ProgressSink"]
    sinks.log({"charts/episode_return": 0.1}, step=10)
    sinks.close()
    assert not (tmp_path / "wandb").exists()
    assert "[distrl] 10/1,000 env steps" in out.getvalue()


# ---- import hygiene --------------------------------------------------------------------------------------


def test_import_is_cheap_and_wandb_is_only_imported_in_wandb_sink():
    code = (
        "import sys, distrl.logging\n"
        "heavy = [m for m in ('wandb', 'rich', 'torch', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    importers = [
        str(p.relative_to(REPO))
        for p in (REPO / "distrl").rglob("*.py")
        if re.search(r"^\s*(import wandb|from wandb)", p.read_text(), re.M)
    ]
    assert importers == ["distrl/logging/wandb_sink.py"]


def test_run_monitor_actor_time_fractions_are_windowed_and_survive_restarts(tmp_path):
    from distrl.config import ExperimentConfig, LoggingConfig
    from distrl.runtime.common import RunMonitor
    from distrl.types import ActorReport

    cfg = ExperimentConfig(logging=LoggingConfig(wandb="disabled", progress=False, log_every_s=0.0))
    mon = RunMonitor(cfg, tmp_path)

    def stats(aid, inc, policy, env, step):
        return ActorReport(actor_id=aid, incarnation=inc, time_policy_s=policy, time_env_s=env, time_step_s=step,
                           env_steps=0, steps_per_s=0.0, faults=0, sequences=0, episodes=0, policy_version=0)

    m = mon.maybe_log(10, actor_stats=[stats(0, 0, 1.0, 3.0, 5.0), stats(1, 0, 1.0, 1.0, 5.0)], force=True)
    assert m["actor/time_frac_policy"] == pytest.approx(0.2)
    assert m["actor/time_frac_env"] == pytest.approx(0.4)
    assert m["actor/time_frac_other"] == pytest.approx(0.4)
    # Next window: actor 0 spent its 10 new seconds all in the policy; actor 1 restarted (counts from 0).
    m = mon.maybe_log(20, actor_stats=[stats(0, 0, 11.0, 3.0, 15.0), stats(1, 1, 0.0, 2.0, 2.0)], force=True)
    assert m["actor/time_frac_policy"] == pytest.approx(10.0 / 12.0)
    assert m["actor/time_frac_env"] == pytest.approx(2.0 / 12.0)
    assert m["actor/time_frac_other"] == pytest.approx(0.0)
    mon.close()
