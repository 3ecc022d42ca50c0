"""clusters/: the Ray cluster-launcher YAML and the KubeRay RayJob parse and carry what a distrl run needs.

No cloud is reachable here, so these tests check structure: the launcher config against Ray's own schema, and
both files for GPU learner / CPU actor node kinds, token auth, the install step and a real config path, and that
the custom resources labelling the node kinds are the ones distrl's Ray runtime asks for
(``distrl.runtime.resources.NODE_LABELS``).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private import util as ray_autoscaler_util

from distrl.runtime.resources import ENV_ACTOR, LEARNER, NODE_LABELS, REPLAY_SHARD

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CLUSTERS / name).read_text())
    assert isinstance(data, dict), f"clusters/{name} must be a YAML mapping"
    return data


def _config_path_in(command: str) -> Path:
    """The configs/*.yaml named in a `distrl train ...` command, resolved inside this repository."""
    for token in shlex.split(command):
        m = re.search(r"(?:^|/)(configs/[\w./-]+\.ya?ml)$", token)
        if m:
            return REPO / m.group(1)
    raise AssertionError(f"no configs/*.yaml in command: {command!r}")


def _assert_exists(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(REPO)} referenced by clusters/ does not exist"


# ---- Ray cluster launcher ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return _load("ray-cluster.yaml")


def test_launcher_passes_rays_own_schema(launcher):
    util = ray_autoscaler_util  # ray is a dependency of distrl: a missing module is a failure, not a skip
    util.validate_config(util.prepare_config(launcher))  # raises on unknown or mistyped fields


def test_launcher_node_types(launcher):
    assert launcher["cluster_name"]
    assert launcher["provider"]["type"] in {"aws", "gcp", "azure"}
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    gpu = {n: t for n, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    cpu = {n: t for n, t in types.items() if t.get("resources", {}).get("env_actor", 0) >= 1}
    assert gpu, "needs a GPU learner node type"
    assert cpu, "needs a CPU env-actor node type"
    assert all(t["resources"].get("learner", 0) >= 1 for t in gpu.values())
    assert all(t["resources"].get("GPU", 0) == 0 for t in cpu.values())
    assert types[launcher["head_node_type"]]["resources"].get("replay_shard", 0) >= 1, "shards belong on the head"
    assert launcher["head_node_type"] not in gpu and launcher["head_node_type"] not in cpu
    for name in (*gpu, *cpu):
        assert types[name]["min_workers"] <= types[name]["max_workers"] <= launcher["max_workers"], name


def test_launcher_installs_distrl_and_uses_token_auth(launcher):
    setup = " ".join(launcher["setup_commands"])
    assert "tools/install.sh" in setup and "distrl" in setup
    assert (REPO / "tools" / "install.sh").is_file()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in launcher[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert any("--head" in c for c in launcher["head_start_ray_commands"])
    # workers can only join a token-auth head with the same token
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    assert ".venv" in launcher.get("rsync_exclude", [])


def test_launcher_submit_example_names_an_existing_config():
    text = (CLUSTERS / "ray-cluster.yaml").read_text()
    m = re.search(r"ray job submit .*?-- \\\n#\s+(distrl train [^\n]+)", text)
    assert m, "ray-cluster.yaml should show how to submit `distrl train` with `ray job submit`"
    assert "RAY_AUTH_MODE=token ray job submit" in text
    path = _config_path_in(m.group(1))
    _assert_exists(path)


# ---- KubeRay RayJob ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return _load("rayjob.yaml")


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def ray_resources(group: dict[str, Any]) -> dict[str, float]:
    """A KubeRay group's ``rayStartParams.resources`` (KubeRay's quoted-JSON form or plain JSON)."""
    raw = group["rayStartParams"].get("resources", "{}")
    return json.loads(json.loads(raw) if raw.startswith('"') else raw)


def test_rayjob_spec(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]
    spec = rayjob["spec"]
    assert spec["entrypoint"].startswith("distrl train ")
    assert spec["shutdownAfterJobFinishes"] is True
    yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))  # a YAML string inside the YAML
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    major, minor = (int(x) for x in cluster["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52), "token auth needs Ray >= 2.52"
    assert _containers(cluster["headGroupSpec"])


def test_rayjob_worker_groups(rayjob):
    groups = {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}

    def gpus(g: dict[str, Any]) -> int:
        return sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in _containers(g))

    gpu = [g for g in groups.values() if gpus(g) >= 1]
    cpu = [g for g in groups.values() if gpus(g) == 0]
    assert gpu and cpu, f"need a GPU learner group and a CPU actor group, got {sorted(groups)}"
    assert all(ray_resources(g).get("learner", 0) >= 1 for g in gpu)
    assert all(ray_resources(g).get("env_actor", 0) >= 1 for g in cpu)
    assert ray_resources(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]).get("replay_shard", 0) >= 1
    for g in groups.values():
        assert g.get("minReplicas", 0) <= g["replicas"] <= g.get("maxReplicas", g["replicas"]), g["groupName"]
        for c in _containers(g):
            assert c["image"] and c["resources"]["requests"], g["groupName"]


def test_rayjob_entrypoint_config_exists(rayjob):
    entry = rayjob["spec"]["entrypoint"]
    assert "runtime.run_dir=/" in entry, "the run dir must be absolute (the job's cwd is not the repository)"
    path = _config_path_in(entry)
    _assert_exists(path)
    from distrl.config import load_config

    overrides = [t for t in shlex.split(entry) if "=" in t]
    cfg = load_config(path, overrides)  # the entrypoint's config and overrides load and validate
    assert cfg.runtime.address == "auto"


# ---- the node labels are what the runtime asks for ---------------------------------------------------------

_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def _declared_labels() -> dict[str, set[str]]:
    """Custom resources declared per node kind in both files (head, GPU kinds, CPU kinds)."""
    launcher, rayjob = _load("ray-cluster.yaml"), _load("rayjob.yaml")
    out: dict[str, set[str]] = {}
    for name, t in launcher["available_node_types"].items():
        out[f"ray-cluster.yaml:{name}"] = set(t.get("resources", {})) - _BUILTIN
    spec = rayjob["spec"]["rayClusterSpec"]
    out["rayjob.yaml:head"] = set(ray_resources(spec["headGroupSpec"])) - _BUILTIN
    for g in spec["workerGroupSpecs"]:
        out[f"rayjob.yaml:{g['groupName']}"] = set(ray_resources(g)) - _BUILTIN
    return out


def test_cluster_labels_are_the_ones_the_runtime_requests():
    declared = _declared_labels()
    requested = set(NODE_LABELS.values())
    for where, labels in declared.items():
        assert labels <= requested, f"{where} declares {sorted(labels - requested)}, which distrl never asks for"
    for file in ("ray-cluster.yaml", "rayjob.yaml"):
        in_file = set().union(*(v for k, v in declared.items() if k.startswith(file)))
        assert in_file == requested, f"{file} labels {sorted(in_file)}, distrl asks for {sorted(requested)}"


def test_a_labelled_cluster_pins_each_component_to_its_node_kind(launcher):
    """Feed ray_options what the launcher file gives Ray: each component asks for the label of its node kind."""
    from distrl.config import load_config
    from distrl.runtime.resources import ray_options

    types = launcher["available_node_types"]
    cluster: dict[str, float] = {}
    for t in types.values():
        for k, v in t.get("resources", {}).items():
            cluster[k] = cluster.get(k, 0.0) + float(v)
    opts = ray_options(load_config(REPO / "configs/minihack_multiroom.yaml"), cluster)
    kind_of = {LEARNER: "gpu_learner", ENV_ACTOR: "cpu_actors", REPLAY_SHARD: launcher["head_node_type"]}
    for component, node_type in kind_of.items():
        (label,) = opts[component]["resources"]
        assert types[node_type]["resources"].get(label, 0) > 0, (component, node_type)
        others = [n for n in types if n != node_type]
        assert all(label not in types[n].get("resources", {}) for n in others), (component, label)


# ---- storage: where each file's run writes, and what the runtime does with a cluster that is still starting ----


def _run_dir_of(command: str) -> str:
    found = [t.split("=", 1)[1] for t in shlex.split(command) if t.startswith("runtime.run_dir=")]
    assert found, f"no runtime.run_dir in {command!r}: a job's relative run_dir would land under ~/distrl"
    return found[0]


def test_rayjob_run_dir_is_on_the_heads_volume(rayjob):
    """The driver (and the replay shards, pinned to the head) write the run under runtime.run_dir: it must be
    on a volume the head pod mounts, or the run is lost with the cluster."""
    from distrl import storage

    run_dir = _run_dir_of(rayjob["spec"]["entrypoint"])
    assert storage.resolve_location(run_dir) == run_dir, "absolute, as given"
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    mounts = [m["mountPath"] for c in _containers(head) for m in c.get("volumeMounts", [])]
    assert any(run_dir == m or run_dir.startswith(m.rstrip("/") + "/") for m in mounts), (run_dir, mounts)
    claims = {v["name"] for v in head["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    mounted = {m["name"] for c in _containers(head) for m in c.get("volumeMounts", [])}
    assert claims & mounted, "the runs volume must be a PersistentVolumeClaim, which outlives the RayJob"


def test_launcher_submit_example_loads_and_keeps_the_run_on_the_head():
    text = (CLUSTERS / "ray-cluster.yaml").read_text()
    m = re.search(r"ray job submit .*?-- \\\n#\s+(distrl train [^\n]+)", text)
    assert m
    command = m.group(1)
    run_dir = _run_dir_of(command)
    assert run_dir.startswith("/") or "://" in run_dir, run_dir
    from distrl.config import load_config

    cfg = load_config(_config_path_in(command), [t for t in shlex.split(command) if "=" in t])
    assert cfg.runtime.address == "auto"


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "rayjob.yaml"])
def test_a_cluster_with_only_its_head_up_is_not_shrunk_to_fit(name, launcher, rayjob):
    """At submission an autoscaled cluster may be just its head; the head's label keeps distrl from scaling the
    run's CPU reservations down to the head's CPUs (runtime.fit_to_cluster applies to unlabelled clusters)."""
    from distrl.config import load_config
    from distrl.runtime.resources import fit_to_cluster, ray_options

    if name == "ray-cluster.yaml":
        head = dict(launcher["available_node_types"][launcher["head_node_type"]]["resources"])
    else:
        head = ray_resources(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"])
    head = {**head, "CPU": 2.0}
    cfg = load_config(REPO / "configs/minihack_multiroom.yaml")
    opts = ray_options(cfg, head)
    fitted, msg = fit_to_cluster(cfg, opts, head)
    assert fitted == opts and msg == ""
