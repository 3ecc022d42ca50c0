"""Joining or starting the Ray a run uses, without importing torch or the models.

:func:`start_ray` joins ``runtime.address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets) or starts a local
Ray on 127.0.0.1 (:func:`init_local_ray`). :func:`start_ray_while_importing` does the same while a thread imports
the runtime: Ray's own start (its GCS, raylet and agents, 2-4 s on 2 cores) keeps about 1.2 of 2 cores busy and
mostly waits on its processes, so the driver's imports of torch, the models and the envs (about 2 s) fit beside
it (BENCHMARKS.md, "Every process of a run starts at once").
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import threading
from collections.abc import Iterator
from typing import Any

import ray

from distrl.config import ExperimentConfig
from distrl.runtime.resources import cpus_needed

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


LOCAL_RAY_SYSTEM_CONFIG: dict[str, int] = {
    "task_events_max_num_task_in_gcs": 10_000,
    "maximum_gcs_destroyed_actor_cached_count": 1_000,
}
"""Caps on what the GCS of a cluster distrl starts keeps for Ray's state API: the events of the last 10,000 tasks
(Ray's default keeps 100,000; a run's inserts, status polls and weight pulls are all tasks) and the records of
the last 1,000 dead actors (every restarted actor leaves one). Without them the GCS grew 42 → 75 MB in a
30-minute run with no fault and 64 → 124 MB in one with 43 faults (BENCHMARKS.md, "Chaos soak")."""


def local_ray_system_config() -> dict[str, int]:
    """The ``_system_config`` of a cluster distrl starts: :data:`LOCAL_RAY_SYSTEM_CONFIG`, and its workers at the
    driver's priority (``worker_niceness`` 0) unless ``RAY_worker_niceness`` is set in the environment.

    Ray starts workers at nice 15 so that its raylet and GCS stay responsive on a shared node. On a machine a run
    has to itself the workers (learner, env actors, shards) are the run, and at nice 15 they yield to every
    nice-0 process (the driver's monitor loop, Ray's own agents, anything else the user runs): on 2 cores the
    quickstart trained 4,030-4,167 env steps/s at 15 against 4,133-4,662 at 0, in alternating runs
    (BENCHMARKS.md, "A local run's workers run at the driver's priority"), and a stuck-actor heartbeat can
    mistake a starved actor for a hung one. ``nice distrl train`` still lowers the whole run."""
    from ray._private import ray_constants

    cfg = dict(LOCAL_RAY_SYSTEM_CONFIG)
    if ray_constants.RAY_WORKER_NICENESS not in os.environ:
        cfg["worker_niceness"] = 0
    return cfg


def init_local_ray(**kwargs: Any) -> None:
    """``ray.init`` a fresh single-machine cluster whose every process (GCS, raylet, workers, dashboard and
    runtime-env agents) listens on 127.0.0.1 only, with the GCS's tables capped and its workers at the driver's
    priority (:func:`local_ray_system_config`, unless ``_system_config`` is given), and without the head
    processes such a cluster has no use for (:func:`_without_idle_head_processes`).

    ``_node_ip_address="127.0.0.1"`` alone does not do it: Ray replaces a loopback node address by the host's
    routable one (so other nodes could join) and its servers then listen on all interfaces. With clusters
    disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's default on macOS and Windows) the node address
    stays loopback; the setting applies while the cluster starts (its processes inherit it) and is put back
    afterwards, so a later ``ray.init(address=...)`` in this process can still join a real cluster.
    """
    from ray._private import ray_constants  # the flag is read once, at import; set it for this start

    saved_env, saved_flag = os.environ.get(_LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    kwargs.setdefault("_system_config", local_ray_system_config())
    try:
        with _without_idle_head_processes(drop_log_monitor=not kwargs.get("log_to_driver", True),
                                          drop_api_server=kwargs.get("include_dashboard") is False):
            ray.init(_node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = saved_env


@contextlib.contextmanager
def _without_idle_head_processes(drop_log_monitor: bool, drop_api_server: bool) -> Iterator[None]:
    """While ``ray.init`` starts a head node here, leave out the processes a fixed single-machine cluster has no
    use for (BENCHMARKS.md, "A local run's Ray starts without its idle head processes"):

    * the autoscaler's monitor (such a cluster never scales);
    * with ``drop_log_monitor`` (``log_to_driver=False``: no driver reads workers' output, which stays in the
      session's log files), the log monitor;
    * with ``drop_api_server`` (``include_dashboard=False``), the API server: with the dashboard off Ray still
      starts ``dashboard.py`` with its usage-stats module alone, to report Ray's usage statistics, and
      ``ray.init`` waits for it to come up. Leaving it out saves about 0.6 s of the start and 78 MB; Ray's usage
      statistics are not reported from such a cluster. Ray's own start treats a missing API server as one that
      failed to start (it raises only when the dashboard was asked for).

    The monitor and the log monitor are Python processes of about 50 MB each. ``ray.init`` takes no option for
    any of the three, so for the length of the call Ray's ``RayParams`` is replaced by a subclass that sets its
    ``no_monitor`` and ``include_log_monitor`` fields, and ``Node.start_api_server`` by a no-op. Where a Ray
    release lacks them the node starts with those processes, as before; ``tests/ray/test_ray_start.py`` fails
    then.
    """
    from ray._private import node, parameter

    base = parameter.RayParams
    fields = ("no_monitor", "include_log_monitor")
    trim_params = all(f in inspect.signature(base.__init__).parameters for f in fields)
    start_api_server = getattr(node.Node, "start_api_server", None)

    class TrimmedParams(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kw: Any) -> None:
            kw["no_monitor"] = True
            if drop_log_monitor:
                kw["include_log_monitor"] = False
            super().__init__(*args, **kw)

    def no_api_server(self: Any, **kw: Any) -> None:
        return None

    if trim_params:
        parameter.RayParams = TrimmedParams
    if drop_api_server and start_api_server is not None:
        node.Node.start_api_server = no_api_server
    try:
        yield
    finally:
        parameter.RayParams = base
        if start_api_server is not None:
            node.Node.start_api_server = start_api_server


def start_ray(cfg: ExperimentConfig) -> bool:
    """Join or start Ray for ``cfg``; returns True when this call started or joined it (so the caller must
    ``ray.shutdown()`` at the end), False when this process was already connected."""
    if ray.is_initialized():
        return False
    address = cfg.runtime.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    need = cpus_needed(cfg)["total"]
    num_cpus = cfg.runtime.num_cpus or max(os.cpu_count() or 1, int(need + 0.999))
    init_local_ray(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def start_ray_while_importing(cfg: ExperimentConfig, module: str) -> bool:
    """:func:`start_ray` in this (the main) thread, which Ray wants for its SIGTERM handler, while a second
    thread imports ``module``. An import error is not lost: the caller's own import of ``module`` raises it
    again. Returns what :func:`start_ray` returns."""
    importer = threading.Thread(target=_import_quietly, args=(module,), name="distrl-import", daemon=True)
    importer.start()
    try:
        return start_ray(cfg)
    finally:
        importer.join()


def _import_quietly(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:  # raised again by the caller's own import, in its own thread
        pass
