"""The local Ray cluster a run starts listens on loopback only (every process: GCS, raylet, workers, agents)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}

# In a fresh process: this test session's own cluster is already up (ray.init in conftest).
SCRIPT = textwrap.dedent("""
    import json, os, time
    import ray
    import psutil  # ray ships it (ray/thirdparty_files, on sys.path once ray is imported)
    from distrl.runtime.ray_start import init_local_ray

    init_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self):
            return os.getpid()
    probe = Probe.remote()
    pid = ray.get(probe.pid.remote())
    time.sleep(1.0)  # agents finish binding
    tree = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    listen = sorted({(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
                     for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in tree})
    out = {"listen": listen, "actor_in_tree": pid in tree,
           "env_restored": "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ}
    ray.shutdown()
    print("RESULT " + json.dumps(out))
""")


def test_the_local_cluster_listens_on_loopback_only():
    env_clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env_clean, capture_output=True, text=True,
                          timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["actor_in_tree"] and out["env_restored"]
    names = {name for _, _, name in out["listen"]}
    assert {"gcs_server", "raylet"} <= names, out  # the probe saw the cluster's own servers
    exposed = [x for x in out["listen"] if x[0] not in LOOPBACK]
    assert exposed == [], f"listening beyond loopback: {exposed}"


def test_the_local_clusters_gcs_keeps_capped_tables(ray_cluster):
    """The GCS of a cluster distrl starts gets LOCAL_RAY_SYSTEM_CONFIG (read back from its own command line)."""
    import base64

    import psutil  # ray ships it (ray/thirdparty_files, on sys.path once ray is imported)

    from distrl.runtime.ray_start import LOCAL_RAY_SYSTEM_CONFIG

    gcs = [p for p in psutil.Process().children(recursive=True) if p.name() == "gcs_server"]
    assert len(gcs) == 1, "this test session's cluster (tests/conftest.py) runs one GCS"
    arg = next(a for a in gcs[0].cmdline() if a.startswith("--config_list="))
    config = json.loads(base64.b64decode(arg.split("=", 1)[1]))
    assert {k: config.get(k) for k in LOCAL_RAY_SYSTEM_CONFIG} == LOCAL_RAY_SYSTEM_CONFIG
