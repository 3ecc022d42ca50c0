"""The pure parts of tools/bench/train_rate.py and rllib_appo.py: tasks, memory sampling, ratios, crossings."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))

import rllib_appo
import train_rate


def test_task_namespace_sets_env_config_and_target() -> None:
    args = argparse.Namespace(env="MiniHack-Room-5x5-v0", config="configs/quickstart.yaml",
                              pong_config="configs/pong_small.yaml", seconds=1.0)
    room = train_rate.task_namespace(args, "room5x5")
    pong = train_rate.task_namespace(args, "pong")
    assert (room.env, room.config, room.target, room.task) == ("MiniHack-Room-5x5-v0", "configs/quickstart.yaml",
                                                               0.9, "room5x5")
    assert (pong.env, pong.config, pong.target) == ("ALE/Pong-v5", "configs/pong_small.yaml", None)
    assert args.env == "MiniHack-Room-5x5-v0" and not hasattr(args, "task")  # the original is untouched


def test_process_tree_samples_pss_of_this_process() -> None:
    assert train_rate._pss_bytes(os.getpid()) > 1 << 20
    assert train_rate._pss_bytes(2**22 + 12345) == 0  # no such process
    tree = train_rate.ProcessTree(os.getpid())
    tree.sample()
    tree.sample()
    peak = tree.peak_pss_gib()
    assert peak is not None and peak > 0
    assert tree.peak_pss_gib(0.0, 1.0) is None  # no sample in that window
    roles = tree.peak_pss_by_role_mib()
    assert roles and list(roles.values()) == sorted(roles.values(), reverse=True)
    assert abs(sum(roles.values()) - peak * 1024) < 1.0  # the roles add up to the peak (MiB vs GiB)


def test_process_roles_name_module_runs_and_multiprocessing_children() -> None:
    """A multiprocessing child is not counted as its parent program (an env actor's subprocess envs once showed
    up as distrl's driver, both being ``python``), and ``python -m distrl train`` is the driver."""
    import multiprocessing as mp
    import subprocess
    import time

    ctx = mp.get_context("spawn")
    child = ctx.Process(target=time.sleep, args=(30,))
    child.start()
    mod = subprocess.Popen([sys.executable, "-m", "timeit", "-n", "1", "-r", "1", "import time; time.sleep(30)"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20.0  # until both have exec'd (before that they show pytest's command line)
        want = {child.pid: "multiprocessing worker", mod.pid: "-m timeit -n"}
        while time.monotonic() < deadline and any(train_rate._role(p) != r for p, r in want.items()):
            time.sleep(0.05)
        assert {p: train_rate._role(p) for p in want} == want
    finally:
        child.terminate()
        child.join()
        mod.terminate()
        mod.wait()


def test_sf_ratio_line_divides_by_sample_factory() -> None:
    results = {
        "sample_factory": [{"consumed_steps_per_s": 1000.0, "peak_pss_gib": 1.0, "time_to_target_s": 10.0},
                           {"consumed_steps_per_s": 3000.0, "peak_pss_gib": 3.0, "time_to_target_s": None}],
        "distrl": [{"consumed_steps_per_s": 4000.0, "peak_pss_gib": 1.0, "time_to_target_s": 5.0},
                   {"consumed_steps_per_s": 4000.0, "peak_pss_gib": 3.0, "time_to_target_s": 7.0}],
    }
    line = train_rate.sf_ratio_line("room5x5", "MiniHack-Room-5x5-v0", results)
    assert line["bench"] == "train_rate_vs_sample_factory" and line["rounds"] == 2
    assert line["distrl_consumed_steps_per_s_ratio"] == pytest.approx(2.0)  # 4000 / median(1000, 3000)
    assert line["distrl_peak_pss_gib_ratio"] == pytest.approx(1.0)
    assert line["distrl_time_to_target_s_ratio"] == pytest.approx(0.6)  # median(5, 7) / 10 (None dropped)
    assert line["distrl_times_to_target_s"] == [5.0, 7.0]
    assert "rllib_appo_consumed_steps_per_s" not in line


def test_rllib_learning_curve_times_the_first_full_window_crossing(tmp_path: Path) -> None:
    # 150 episodes of one env, 10 steps each: returns 0 for the first 100, then 1; a window of 100 reaches a
    # mean of 0.9 at the 190th episode, which never comes, and 0.5 at the 150th.
    lines = [f"{1000.0 + i:.3f} {10 * (i + 1)} {0.0 if i < 100 else 1.0:.6f} 0\n" for i in range(150)]
    (tmp_path / "env_1.txt").write_text("".join(lines))
    curve, n, crossed = rllib_appo.learning_curve(str(tmp_path), target=0.5)
    assert n == 150 and crossed == pytest.approx(1000.0 + 149)
    assert curve[-1][0] == 1500.0 and curve[-1][1] == pytest.approx(0.5)
    assert rllib_appo.learning_curve(str(tmp_path), target=0.9)[2] is None
    assert rllib_appo.learning_curve(str(tmp_path))[2] is None


def test_chaos_soak_names_processes_as_train_rate_does() -> None:
    """tools/chaos.py's per-role memory uses train_rate's naming (it once had its own copy, which named every
    multiprocessing child and ``-m`` run after its program); its own process is the driver."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import chaos

    class Proc:
        def __init__(self, pid: int, cmd: list[str], name: str = "python") -> None:
            self.pid, self._cmd, self._name = pid, cmd, name

        def cmdline(self) -> list[str]:
            return self._cmd

        def name(self) -> str:
            return self._name

    me = Proc(1, ["python", "tools/chaos.py"])
    assert chaos.process_role(me, me) == "driver"
    cases = {
        "RayLearner": ["ray::RayLearner.step"],
        "multiprocessing forkserver": ["python", "-c", "from multiprocessing.forkserver import main; main(3, 4)"],
        "-m distrl train": ["python", "-m", "distrl", "train", "configs/quickstart.yaml"],
        "raylet": [],  # no command line readable: the program's name
    }
    for want, cmd in cases.items():
        assert chaos.process_role(Proc(2, cmd, name="raylet"), me) == want
        if cmd:
            assert train_rate.role_of_command(cmd) == want
