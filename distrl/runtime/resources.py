"""What each Ray actor of a run asks Ray for: CPUs (and a GPU) from the config, and the node labels of a cluster.

Amounts come from the config and are derived here only: ``learner.num_cpus``, ``replay.num_cpus`` and
``actor.num_cpus`` (0 = 1, plus ``env.num_workers`` with ``env.vectorization=subprocess``). A learner also
gets one GPU when the cluster has one per learner and ``learner.device`` is ``auto`` or ``cuda``.

**Node labels.** A cluster may declare a custom resource named after a component (:data:`NODE_LABELS`:
``learner``, ``env_actor``, ``replay_shard``) on the nodes meant for it, as ``clusters/*.yaml`` do. With
``runtime.node_labels`` (true by default) each learner, env actor or replay shard then also asks for
:data:`LABEL_AMOUNT` of its label, which pins it to those nodes; how many fit on a node is still decided by its
CPUs and GPUs alone (a label declared as 1 takes up to 1 / LABEL_AMOUNT = 1000 of them). A label the cluster
does not declare is not asked for, so a laptop's local Ray (no labels) places everything by CPU as before.

Pure functions of the config and ``ray.cluster_resources()``; no Ray import, so they are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distrl.config import ExperimentConfig

LEARNER, ENV_ACTOR, REPLAY_SHARD = "learner", "env_actor", "replay_shard"
COMPONENTS = (LEARNER, ENV_ACTOR, REPLAY_SHARD)
NODE_LABELS: dict[str, str] = {LEARNER: "learner", ENV_ACTOR: "env_actor", REPLAY_SHARD: "replay_shard"}
"""Component -> the custom Ray resource that labels the nodes for it."""
LABEL_AMOUNT = 0.001
"""How much of its node label each component actor asks for: enough to pin it, too little to limit how many fit
(Ray counts custom resources in units of 0.0001)."""
_KIND = {LEARNER: "learners", ENV_ACTOR: "env actors", REPLAY_SHARD: "replay shards"}


def env_actor_cpus(cfg: ExperimentConfig) -> float:
    """Ray CPUs one env actor reserves: ``actor.num_cpus``, or (0) its own process plus its env workers."""
    if cfg.actor.num_cpus > 0:
        return float(cfg.actor.num_cpus)
    return 1.0 if cfg.env.vectorization == "inline" else 1.0 + cfg.env.num_workers


def component_cpus(cfg: ExperimentConfig) -> dict[str, float]:
    """Ray CPUs per actor of each component."""
    return {LEARNER: float(cfg.learner.num_cpus), ENV_ACTOR: env_actor_cpus(cfg),
            REPLAY_SHARD: float(cfg.replay.num_cpus)}


def component_counts(cfg: ExperimentConfig) -> dict[str, int]:
    """How many Ray actors of each component a run starts."""
    return {LEARNER: cfg.learner.num_learners, ENV_ACTOR: cfg.actor.num_actors, REPLAY_SHARD: cfg.replay.num_shards}


def ray_options(cfg: ExperimentConfig, cluster: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """``ray.remote(**options)`` resource options per component (``num_cpus``, and ``num_gpus`` / ``resources``
    where asked for) on a cluster whose ``ray.cluster_resources()`` are ``cluster``.

    Raises RuntimeError when ``learner.device=cuda`` and the cluster has fewer GPUs than learners.
    """
    options: dict[str, dict[str, Any]] = {c: {"num_cpus": n} for c, n in component_cpus(cfg).items()}
    gpus = float(cluster.get("GPU", 0.0))
    dev, n = cfg.learner.device, cfg.learner.num_learners
    if dev in ("auto", "cuda") and gpus >= n:
        options[LEARNER]["num_gpus"] = 1
    elif dev == "cuda":
        raise RuntimeError(f"learner.device=cuda but the cluster has {gpus:g} GPUs for {n} learners")
    if cfg.runtime.node_labels:
        for c, label in NODE_LABELS.items():
            if float(cluster.get(label, 0.0)) > 0:
                options[c]["resources"] = {label: LABEL_AMOUNT}
    return options


def fit_to_cluster(
    cfg: ExperimentConfig, options: Mapping[str, Mapping[str, Any]], cluster: Mapping[str, float]
) -> tuple[dict[str, dict[str, Any]], str]:
    """``options`` with every CPU reservation scaled down by one factor so that the run fits the cluster's CPUs,
    and a line for the log saying so; ``(options, "")`` unchanged when the run fits, when
    ``runtime.fit_to_cluster`` is false, or when the cluster declares node labels (a managed cluster: its nodes
    decide, and an autoscaler may add more).

    This is what a fresh local Ray does by over-committing logical CPUs: the actors share the cores they have.
    """
    out = {c: dict(o) for c, o in options.items()}
    have = float(cluster.get("CPU", 0.0))
    counts = component_counts(cfg)
    need = sum(counts[c] * float(o["num_cpus"]) for c, o in out.items())
    labelled = any(float(cluster.get(label, 0.0)) > 0 for label in NODE_LABELS.values())
    if not cfg.runtime.fit_to_cluster or labelled or have <= 0 or need <= have + 1e-9:
        return out, ""
    factor = have / need
    for o in out.values():
        if o["num_cpus"] > 0:  # Ray counts CPUs in units of 0.0001; round down so the sum stays within `have`
            o["num_cpus"] = max(int(o["num_cpus"] * factor * 1000) / 1000, 0.001)
    scaled = ", ".join(f"{_KIND[c]} {out[c]['num_cpus']:g}" for c in COMPONENTS)
    return out, (
        f"the cluster has {have:g} CPUs and this run reserves {need:g}; scaled every CPU reservation by "
        f"{factor:.3g} to fit (per actor: {scaled}), so the actors share the cores as a local run does. "
        f"runtime.fit_to_cluster=false keeps the reservations and waits for more nodes instead"
    )


def describe(cfg: ExperimentConfig, options: Mapping[str, Mapping[str, Any]], cluster: Mapping[str, float]) -> str:
    """One line for the log: what each component asks for, and which node labels the cluster has."""
    counts = component_counts(cfg)
    parts = []
    for c in COMPONENTS:
        o = options[c]
        ask = f"{o['num_cpus']:g} CPU" + (f" + {o['num_gpus']:g} GPU" if o.get("num_gpus") else "")
        ask += "".join(f" + {k}={v:g}" for k, v in o.get("resources", {}).items())
        parts.append(f"{counts[c]} x {c} ({ask})")
    declared = sorted(label for label in NODE_LABELS.values() if float(cluster.get(label, 0.0)) > 0)
    if not cfg.runtime.node_labels:
        labels = "node labels not used (runtime.node_labels=false)"
    elif declared:
        labels = f"pinned to the nodes labelled {', '.join(declared)}"
        missing = sorted(set(NODE_LABELS.values()) - set(declared))
        if missing:
            labels += f"; no node labelled {', '.join(missing)}: those go wherever CPUs are free"
    else:
        labels = "the cluster declares no node labels (learner, env_actor, replay_shard): placed by CPUs/GPUs"
    return f"Ray resources: {', '.join(parts)}; {labels}"


def cpus_needed(cfg: ExperimentConfig) -> dict[str, float]:
    """CPUs (in Ray's accounting) this run's actors reserve, by kind; ``total`` is their sum."""
    cpus, counts = component_cpus(cfg), component_counts(cfg)
    need = {_KIND[c]: counts[c] * cpus[c] for c in (ENV_ACTOR, LEARNER, REPLAY_SHARD)}
    need["total"] = sum(need.values())
    return need


def placement_message(cfg: ExperimentConfig, cluster: Mapping[str, float]) -> str:
    """Why a run may not be placed: what it reserves against what the cluster has, and what to change."""
    need = cpus_needed(cfg)
    have = float(cluster.get("CPU", 0.0))
    parts = ", ".join(f"{k} {v:g}" for k, v in need.items() if k != "total")
    msg = (
        f"this run reserves {need['total']:g} CPUs in Ray ({parts}) and the cluster has {have:g}. Give Ray more "
        f"(`ray start --num-cpus N`, ray.init(num_cpus=N), or runtime.num_cpus=N for the local cluster distrl "
        f"starts itself) or ask for less (actor.num_actors / actor.num_cpus, learner.num_learners / "
        f"learner.num_cpus, replay.num_shards / replay.num_cpus)"
    )
    pinned = sorted(label for c, o in ray_options(cfg, cluster).items() for label in o.get("resources", {}))
    if pinned:
        msg += (f"; the actors are pinned to the nodes labelled {', '.join(pinned)}, so only those nodes' CPUs "
                f"count for them (runtime.node_labels=false places them anywhere)")
    return msg
