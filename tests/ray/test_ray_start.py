"""`distrl train` starts Ray while a thread imports the runtime (distrl.runtime.ray_start): the import's errors and
a bad config found after Ray's start still surface, and a Ray started for the run is stopped again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distrl.config import quickstart_config
from distrl.runtime.ray_start import start_ray_while_importing

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def test_the_import_is_done_when_ray_is_up(ray_cluster, tmp_path, monkeypatch):
    (tmp_path / "distrl_probe_ok.py").write_text("import time\ntime.sleep(0.3)\nVALUE = 7\n")
    (tmp_path / "distrl_probe_bad.py").write_text("raise RuntimeError('probe module is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = quickstart_config()
    # this session's cluster is already up: joined, not owned
    assert start_ray_while_importing(cfg, "distrl_probe_ok") is False
    assert sys.modules["distrl_probe_ok"].VALUE == 7
    assert ray_cluster.is_initialized()
    # an import that fails in the thread fails again, with its own error, where the caller imports it
    assert start_ray_while_importing(cfg, "distrl_probe_bad") is False
    assert "distrl_probe_bad" not in sys.modules
    with pytest.raises(RuntimeError, match="probe module is broken"):
        import distrl_probe_bad  # noqa: F401


def test_a_config_error_after_rays_start_stops_that_ray_and_leaves_no_run(tmp_path):
    """An unknown learner extra is found once the runtime is imported, beside Ray's start: `distrl train`
    exits 2 naming it, creates no run directory, and stops the Ray it started (no raylet of its session left)."""
    script = textwrap.dedent(f"""
        import os, sys
        import ray
        from distrl.cli import main
        rc = main(["train", "runtime.run_dir={tmp_path / 'runs'}", "learner.extras=[nope]", "runtime.num_cpus=1"])
        print("RC", rc, "RAY_UP", ray.is_initialized())
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RC 2 RAY_UP False" in out.stdout, (out.stdout, out.stderr[-3000:])
    assert "unknown extra 'nope'" in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _head_processes() -> list[str]:
    import psutil  # ray ships it (ray/thirdparty_files, on sys.path once ray is imported)

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            out.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    return out


def test_a_local_cluster_runs_without_the_monitor_log_monitor_and_api_server(ray_cluster):
    """This session's cluster, started as `distrl train` starts one (init_local_ray, log_to_driver=False,
    include_dashboard=False): its GCS and raylet run; the autoscaler's monitor, the log monitor and the API server
    (dashboard.py, which would hold only Ray's usage-stats module) do not, and actors still work."""
    procs = _head_processes()
    assert any("gcs_server" in c for c in procs) and any("raylet" in c for c in procs), procs
    assert not any("autoscaler/_private/monitor.py" in c for c in procs), procs
    assert not any("log_monitor.py" in c for c in procs), procs
    assert not any("dashboard/dashboard.py" in c for c in procs), procs
    from ray._private import node, parameter  # Ray's own start is put back once the cluster is up
    assert node.Node.start_api_server.__name__ == "start_api_server"
    assert parameter.RayParams.__name__ == "RayParams"

    @ray_cluster.remote(num_cpus=0)
    def square(x: int) -> int:
        return x * x

    assert ray_cluster.get(square.remote(7)) == 49


def test_with_log_to_driver_the_log_monitor_stays_and_streams_worker_output():
    """log_to_driver=True keeps the log monitor, and a task's print reaches the driver; the monitor and the API server
    still go."""
    script = textwrap.dedent("""
        import ray
        from distrl.runtime.ray_start import init_local_ray
        init_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=True)

        @ray.remote(num_cpus=0)
        def hello():
            print("HELLO-FROM-WORKER", flush=True)
            return 1

        ray.get(hello.remote())
        import psutil, time
        time.sleep(2.0)  # the log monitor polls the worker's log file
        procs = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
        print("LOGMON", any("log_monitor.py" in c for c in procs),
              "MONITOR", any("autoscaler/_private/monitor.py" in c for c in procs),
              "API", any("dashboard/dashboard.py" in c for c in procs), flush=True)
        ray.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOGMON True MONITOR False API False" in out.stdout, (out.stdout, out.stderr[-3000:])
    assert "HELLO-FROM-WORKER" in out.stdout + out.stderr


def test_a_local_clusters_workers_run_at_the_drivers_priority(ray_cluster):
    """This session's cluster is started as `distrl train` starts one: its actors run at the driver's nice value,
    not Ray's default of 15 more (on a busy machine those starve: the Ray fault tests ran 4-8x slower)."""

    @ray_cluster.remote(num_cpus=0)
    class Probe:
        def nice(self) -> int:
            return os.nice(0)

    assert ray_cluster.get(Probe.remote().nice.remote()) == os.nice(0)


def test_ray_worker_niceness_in_the_environment_is_kept():
    """A user's RAY_worker_niceness is Ray's own setting, and init_local_ray leaves it to them."""
    script = textwrap.dedent("""
        import os
        import ray
        from distrl.runtime.ray_start import init_local_ray, local_ray_system_config
        assert "worker_niceness" not in local_ray_system_config()
        init_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=False)

        @ray.remote(num_cpus=0)
        def nice():
            return os.nice(0)

        print("NICE", ray.get(nice.remote()) - os.nice(0), flush=True)
        ray.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_worker_niceness": "7"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "NICE 7" in out.stdout, (out.stdout, out.stderr[-3000:])
