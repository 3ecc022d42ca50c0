"""Metrics: one small sink interface, namespaced keys, env steps as the x-axis.

Every component reports scalars as ``{"namespace/name": value}`` with the env-step count as ``step``
(ARCHITECTURE convention 15). The namespaces are:

* ``charts/``  what a user watches: episode_return, episode_length, success_rate, env_steps, sps
* ``losses/``  loss terms (CleanRL's split)
* ``learner/`` learner internals: updates, updates_per_s, policy lag, grad norm, ...
* ``actor/``   env-actor internals: weight version, restarts, env step time, ...
* ``replay/``  shard sizes, sample age, priorities, rate-limiter waits
* ``bonus/``   exploration-bonus statistics
* ``eval/``    ``distrl eval`` results

A key outside these namespaces is a bug in the caller and raises :class:`ValueError` naming the key.

Sinks: :class:`JsonlSink` (always on, ``run_dir/metrics.jsonl``), :class:`CsvSink`, :class:`ProgressSink`
(a rich progress bar on a terminal, plain periodic lines otherwise), :class:`TensorBoardSink` (needs the
``tensorboard`` package) and :class:`WandbSink` (the real ``wandb`` library; offline by default without an API
key). :func:`make_sinks` builds the set a config asks for behind one :class:`MultiSink`. Usage::

    sinks = make_sinks(cfg, run_dir)
    tracker = EpisodeTracker(window=100)
    tracker.add(episode_stats)                         # list[distrl.types.EpisodeStats]
    sinks.log({**tracker.summary(), "learner/updates": n}, step=env_steps)
    sinks.close()

Modules, one job each (import the names from ``distrl.logging``):

* ``base``        namespaces, well-known keys, :func:`check_metrics`, the :class:`MetricSink` protocol
* ``meters``      :class:`EpisodeTracker`, :class:`RateMeter`, :class:`AverageRate`
* ``sinks``       :class:`JsonlSink` / :func:`read_jsonl`, :class:`CsvSink`, :class:`TensorBoardSink`,
  :class:`MultiSink`, :func:`make_sinks`
* ``progress``    :class:`ProgressSink`
* ``wandb_sink``  :class:`WandbSink`, :func:`resolve_wandb_mode`, :func:`read_wandb_records`

Importing the package imports neither ``wandb`` nor ``rich`` nor ``torch``; ``wandb_sink`` is the only distrl
module that imports wandb.
"""

from __future__ import annotations

from distrl.logging.base import (
    ENV_STEPS,
    EPISODE_LENGTH,
    EPISODE_RETURN,
    LEARNER_UPDATES,
    LEARNER_UPDATES_PER_S,
    NAMESPACES,
    SPS,
    SUCCESS_RATE,
    MetricSink,
    check_metrics,
)
from distrl.logging.meters import AverageRate, EpisodeTracker, RateMeter
from distrl.logging.progress import ProgressSink
from distrl.logging.sinks import CsvSink, JsonlSink, MultiSink, TensorBoardSink, make_sinks, read_jsonl
from distrl.logging.wandb_sink import WandbSink, read_wandb_records, resolve_wandb_mode

__all__ = [
    "ENV_STEPS",
    "EPISODE_LENGTH",
    "EPISODE_RETURN",
    "LEARNER_UPDATES",
    "LEARNER_UPDATES_PER_S",
    "NAMESPACES",
    "SPS",
    "SUCCESS_RATE",
    "AverageRate",
    "CsvSink",
    "EpisodeTracker",
    "JsonlSink",
    "MetricSink",
    "MultiSink",
    "ProgressSink",
    "RateMeter",
    "TensorBoardSink",
    "WandbSink",
    "check_metrics",
    "make_sinks",
    "read_jsonl",
    "read_wandb_records",
    "resolve_wandb_mode",
]
