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

This module imports neither ``wandb`` nor ``rich`` nor ``torch`` at import time; no other distrl module
imports wandb.
"""

from __future__ import annotations

import collections
import csv
import json
import math
import netrc
import os
import re
import secrets
import string
import struct
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # types.py imports torch; the tracker only reads attributes, so keep the import cheap
    from distrl.config import ExperimentConfig
    from distrl.types import EpisodeStats

__all__ = [
    "ENV_STEPS",
    "EPISODE_LENGTH",
    "EPISODE_RETURN",
    "LEARNER_UPDATES",
    "LEARNER_UPDATES_PER_S",
    "NAMESPACES",
    "SPS",
    "SUCCESS_RATE",
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

NAMESPACES: tuple[str, ...] = ("charts", "losses", "learner", "actor", "replay", "bonus", "eval")
"""Allowed first path components of a metric key."""

# Well-known keys: the progress display and the wandb x-axis read these.
ENV_STEPS = "charts/env_steps"
SPS = "charts/sps"
EPISODE_RETURN = "charts/episode_return"
EPISODE_LENGTH = "charts/episode_length"
SUCCESS_RATE = "charts/success_rate"
LEARNER_UPDATES = "learner/updates"
LEARNER_UPDATES_PER_S = "learner/updates_per_s"

_KEY_RE = re.compile(r"^(?:" + "|".join(NAMESPACES) + r")/[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")


# ------------------------------------------------------------------------------------------------------------
# Interface and validation
# ------------------------------------------------------------------------------------------------------------


@runtime_checkable
class MetricSink(Protocol):
    """Where scalar metrics go. ``step`` is the env-step count (the x-axis of every chart).

    Usage::

        sink.log({"charts/episode_return": 0.8, "learner/updates": 12}, step=40_960)
        sink.close()
    """

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def check_metrics(metrics: Mapping[str, Any], step: int) -> dict[str, float]:
    """Validate keys and values; return a plain ``{key: float}`` copy.

    Raises ValueError naming the first bad key (no namespace, unknown namespace, odd characters) or value
    (not a real number, e.g. a string, None or a multi-element tensor), or a negative/non-integer step.
    0-d tensors and numpy scalars are accepted through ``float()``.
    """
    if isinstance(step, bool) or (not isinstance(step, int) and not hasattr(step, "__index__")):
        raise ValueError(f"metric step must be an int (env steps), got {step!r}")
    if int(step) < 0:
        raise ValueError(f"metric step must be >= 0, got {step}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(
                f"metric key {key!r} is not namespaced: use '<namespace>/<name>' with namespace one of "
                f"{', '.join(NAMESPACES)} (e.g. 'charts/episode_return', 'replay/size')"
            )
        if isinstance(value, str | bytes) or value is None:
            raise ValueError(f"metric {key!r}: value must be a real number, got {value!r}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"metric {key!r}: value must be a real number, got {value!r} ({e})") from None
    return out


# ------------------------------------------------------------------------------------------------------------
# Episode aggregation and rates
# ------------------------------------------------------------------------------------------------------------


class EpisodeTracker:
    """Sliding-window means over finished episodes, for the ``charts/`` namespace.

    ``summary()`` gives ``charts/episode_return``, ``charts/episode_length`` and ``charts/episodes`` (total
    count since the start), ``charts/success_rate`` over the episodes in the window that define success, and
    the mean of every env-specific extra scalar as ``charts/<name>``. It is empty until the first episode
    ends, so a log call never shows a made-up zero return.

    Usage::

        tracker = EpisodeTracker(window=100)
        tracker.add([EpisodeStats(actor_id=0, env_index=3, episode_return=1.0, length=12, success=1.0)])
        tracker.summary()   # {"charts/episode_return": 1.0, "charts/episode_length": 12.0, ...}
    """

    def __init__(self, window: int = 100) -> None:
        if window < 1:
            raise ValueError(f"EpisodeTracker window must be >= 1, got {window}")
        self.window = window
        self._recent: collections.deque[EpisodeStats] = collections.deque(maxlen=window)
        self.total_episodes = 0

    def add(self, episodes: Iterable[EpisodeStats]) -> None:
        for ep in episodes:
            self._recent.append(ep)
            self.total_episodes += 1

    def __len__(self) -> int:
        return len(self._recent)

    def summary(self) -> dict[str, float]:
        eps = list(self._recent)
        if not eps:
            return {}
        n = len(eps)
        out = {
            EPISODE_RETURN: sum(float(e.episode_return) for e in eps) / n,
            EPISODE_LENGTH: sum(float(e.length) for e in eps) / n,
            "charts/episodes": float(self.total_episodes),
        }
        succ = [float(e.success) for e in eps if e.success is not None]
        if succ:
            out[SUCCESS_RATE] = sum(succ) / len(succ)
        extras: dict[str, list[float]] = collections.defaultdict(list)
        for e in eps:
            for name, value in e.extra:
                extras[name].append(float(value))
        for name, values in extras.items():
            key = f"charts/{name}"
            if key not in out:  # an extra never overrides the standard charts
                out[key] = sum(values) / len(values)
        return out


class RateMeter:
    """Rate of a monotone counter per wall-clock second, between successive ``update`` calls.

    Usage::

        sps = RateMeter()
        sps.update(env_steps)      # None on the first call, then steps/s since the previous call
    """

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def update(self, count: float, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        last, self._last = self._last, (float(count), now)
        if last is None or now <= last[1]:
            return None
        return (float(count) - last[0]) / (now - last[1])


class AverageRate:
    """Rate of a monotone counter per wall-clock second, from the first ``update`` call to the latest.

    Usage::

        avg = AverageRate()
        avg.update(env_steps)
        avg.rate                   # None until two calls with time between them
    """

    def __init__(self) -> None:
        self._first: tuple[float, float] | None = None
        self._latest: tuple[float, float] | None = None

    def update(self, count: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._latest = (float(count), now)
        if self._first is None:
            self._first = self._latest

    @property
    def rate(self) -> float | None:
        if self._first is None or self._latest is None or self._latest[1] <= self._first[1]:
            return None
        return (self._latest[0] - self._first[0]) / (self._latest[1] - self._first[1])


# ------------------------------------------------------------------------------------------------------------
# File sinks
# ------------------------------------------------------------------------------------------------------------


class JsonlSink:
    """Appends one JSON object per ``log`` call to ``run_dir/metrics.jsonl``: ``{"step", "time", **metrics}``.

    ``time`` is Unix wall time in seconds. Non-finite values are written as ``null`` (strict JSON). The file
    is opened in append mode so a resumed run continues it.

    Usage::

        sink = JsonlSink(run_dir)
        sink.log({"charts/episode_return": 0.5}, step=1000)
        read_jsonl(run_dir / "metrics.jsonl")    # [{"step": 1000, "time": ..., "charts/episode_return": 0.5}]
    """

    def __init__(self, run_dir: str | Path, filename: str = "metrics.jsonl") -> None:
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._file is None:
            raise RuntimeError(f"JsonlSink({self.path}) is closed")
        clean = check_metrics(metrics, step)
        row: dict[str, Any] = {"step": int(step), "time": time.time()}
        row.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()  # a crashed or killed run keeps every line it logged

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl file back; a truncated last line (killed writer) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class CsvSink:
    """Writes ``run_dir/metrics.csv`` with columns ``step, time`` and every metric key seen so far.

    A key that first appears later widens the header: the file is rewritten once with the new column (keys
    settle after the first few log calls, so this is rare). Missing values are empty cells.

    Usage::

        sink = CsvSink(run_dir)
        sink.log({"charts/sps": 900.0}, step=1000)
    """

    def __init__(self, run_dir: str | Path, filename: str = "metrics.csv") -> None:
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns: list[str] = ["step", "time"]
        self._rows: list[dict[str, str]] = []
        if self.path.exists() and self.path.stat().st_size > 0:  # resume: keep the existing rows and header
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self._columns = list(reader.fieldnames or self._columns)
                self._rows = [dict(r) for r in reader]
        self._closed = False
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(tmp, self.path)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._closed:
            raise RuntimeError(f"CsvSink({self.path}) is closed")
        clean = check_metrics(metrics, step)
        row = {"step": str(int(step)), "time": repr(time.time())}
        row.update({k: repr(v) for k, v in clean.items()})
        self._rows.append(row)
        new = [k for k in clean if k not in self._columns]
        if new:
            self._columns.extend(new)
            self._rewrite()
            return
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self._columns).writerow(row)

    def close(self) -> None:
        self._closed = True


# ------------------------------------------------------------------------------------------------------------
# Terminal progress
# ------------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


class ProgressSink:
    """Training progress on the terminal: env steps / total, env steps/s, mean return, learner updates/s.

    On a TTY (and with ``rich=True``) this is a rich progress bar, refreshed in the background. Otherwise
    (a pipe, a log file, ``ray job submit``, or ``logging.progress=false``) it prints one plain line at most
    every ``interval_s`` seconds, plus a final line on close::

        [distrl] 12,288/200,000 env steps (6.1%) | 1,530 steps/s | return 0.42 | success 0.40 | 3.1 updates/s

    It reads ``charts/sps``, ``charts/episode_return``, ``charts/success_rate`` and ``learner/updates_per_s``
    from the logged metrics; when a rate is missing it derives it from ``step`` and ``learner/updates``.
    The final state (the last plain line, or the bar when it stops) shows the rates averaged from the first
    to the last ``log`` call instead (``steps/s avg``, ``updates/s avg``): the last report of a run often
    comes after its actors stopped, when the current rate is 0.

    Usage::

        progress = ProgressSink(total_steps=200_000)
        progress.log({"charts/episode_return": 0.4}, step=12_288)
        progress.close()
    """

    def __init__(
        self,
        total_steps: int,
        *,
        rich: bool = True,
        interval_s: float = 5.0,
        stream: IO[str] | None = None,
    ) -> None:
        self.total_steps = int(total_steps)
        self.interval_s = float(interval_s)
        self._stream = stream
        out = stream if stream is not None else sys.stdout
        isatty = bool(getattr(out, "isatty", lambda: False)())
        self.use_rich = rich and isatty and os.environ.get("TERM") != "dumb"
        self._step = 0
        self._last_print = -math.inf
        self._state: dict[str, float | None] = {"sps": None, "ret": None, "succ": None, "ups": None}
        self._steps_rate = RateMeter()
        self._updates_rate = RateMeter()
        self._steps_avg = AverageRate()  # the final line's rates: over the whole run
        self._updates_avg = AverageRate()
        self._progress: Any = None
        self._task: Any = None
        self._closed = False
        if self.use_rich:
            self._start_rich()

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=self._stream) if self._stream is not None else Console()
        self._progress = Progress(
            TextColumn("[bold]distrl"),
            BarColumn(bar_width=24),
            TextColumn("{task.completed:,}/{task.total:,} env steps |"),
            TextColumn("{task.fields[stats]} |"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            refresh_per_second=2,
        )
        self._task = self._progress.add_task("train", total=self.total_steps, stats=self._stats_text())
        self._progress.start()

    def _update_state(self, clean: Mapping[str, float], step: int) -> None:
        self._step = step
        self._steps_avg.update(step)
        if LEARNER_UPDATES in clean:
            self._updates_avg.update(clean[LEARNER_UPDATES])
        derived_sps = self._steps_rate.update(step)
        self._state["sps"] = clean.get(SPS, derived_sps if derived_sps is not None else self._state["sps"])
        if EPISODE_RETURN in clean:
            self._state["ret"] = clean[EPISODE_RETURN]
        if SUCCESS_RATE in clean:
            self._state["succ"] = clean[SUCCESS_RATE]
        derived_ups = self._updates_rate.update(clean[LEARNER_UPDATES]) if LEARNER_UPDATES in clean else None
        if LEARNER_UPDATES_PER_S in clean:
            self._state["ups"] = clean[LEARNER_UPDATES_PER_S]
        elif derived_ups is not None:
            self._state["ups"] = derived_ups

    def _stats_text(self, final: bool = False) -> str:
        s = self._state
        sps, sps_tag = s["sps"], ""
        ups, ups_tag = s["ups"], ""
        if final and self._steps_avg.rate is not None:
            sps, sps_tag = self._steps_avg.rate, " avg"
        if final and self._updates_avg.rate is not None:
            ups, ups_tag = self._updates_avg.rate, " avg"
        parts = [f"{_fmt(sps, ',.0f')} steps/s{sps_tag}", f"return {_fmt(s['ret'], '.3g')}"]
        if s["succ"] is not None:
            parts.append(f"success {_fmt(s['succ'], '.2f')}")
        parts.append(f"{_fmt(ups, ',.1f')} updates/s{ups_tag}")
        return " | ".join(parts)

    def line(self, final: bool = False) -> str:
        """The plain-text status line for the current state (``final``: with the run's average rates)."""
        pct = 100.0 * self._step / self.total_steps if self.total_steps > 0 else 0.0
        stats = self._stats_text(final)
        return f"[distrl] {self._step:,}/{self.total_steps:,} env steps ({pct:.1f}%) | {stats}"

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._closed:
            return
        self._update_state(check_metrics(metrics, step), int(step))
        if self._progress is not None:
            self._progress.update(
                self._task, completed=min(self._step, self.total_steps), stats=self._stats_text()
            )
            return
        now = time.monotonic()
        if now - self._last_print >= self.interval_s:
            self._print(self.line())
            self._last_print = now

    def _print(self, text: str) -> None:
        print(text, file=self._stream if self._stream is not None else sys.stdout, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._progress.update(self._task, stats=self._stats_text(final=True))
            self._progress.stop()  # final refresh shows the last state
        elif self._step > 0:
            self._print(self.line(final=True) + " | done")


# ------------------------------------------------------------------------------------------------------------
# TensorBoard
# ------------------------------------------------------------------------------------------------------------


class TensorBoardSink:
    """Scalars to TensorBoard event files under ``run_dir/tensorboard`` (``tensorboard --logdir runs``).

    Needs the ``tensorboard`` package (``pip install 'distrl[tensorboard]'``); without it the constructor
    raises ImportError saying so.

    Usage::

        sink = TensorBoardSink(run_dir)
        sink.log({"losses/policy": 0.1}, step=1000)
    """

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "logging.tensorboard=true needs the 'tensorboard' package: pip install 'distrl[tensorboard]' "
                f"(or set logging.tensorboard=false); import failed with: {e}"
            ) from e
        self.log_dir = Path(run_dir) / "tensorboard"
        self._writer: Any = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            raise RuntimeError("TensorBoardSink is closed")
        for k, v in check_metrics(metrics, step).items():
            self._writer.add_scalar(k, v, global_step=int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ------------------------------------------------------------------------------------------------------------
# Weights & Biases
# ------------------------------------------------------------------------------------------------------------

WandbMode = Literal["online", "offline", "disabled"]
_WANDB_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
                    "disabled": "disabled"}


def _wandb_netrc_has_key(env: Mapping[str, str]) -> bool:
    """True if ``wandb login`` stored a key for the configured W&B host in the netrc file."""
    host = re.sub(r"^https?://", "", env.get("WANDB_BASE_URL", "https://api.wandb.ai")).split("/")[0]
    path = env.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host.split(":")[0])
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(setting: str, env: Mapping[str, str] | None = None) -> WandbMode:
    """Turn ``logging.wandb`` into the mode to use.

    'online' / 'offline' / 'disabled' are taken as given. 'auto' honours a ``WANDB_MODE`` environment variable
    if one is set (the test suite sets it to offline); otherwise it is 'online' when an API key is available
    (``WANDB_API_KEY`` or a ``wandb login`` netrc entry) and 'offline' when not.
    """
    env = os.environ if env is None else env
    if setting in ("online", "offline", "disabled"):
        return setting  # type: ignore[return-value]
    if setting != "auto":
        raise ValueError(f"logging.wandb must be one of auto, online, offline, disabled; got {setting!r}")
    env_mode = env.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        if env_mode not in _WANDB_ENV_MODES:
            raise ValueError(f"WANDB_MODE={env_mode!r} is not one of {sorted(_WANDB_ENV_MODES)}")
        return _WANDB_ENV_MODES[env_mode]  # type: ignore[return-value]
    if env.get("WANDB_API_KEY") or _wandb_netrc_has_key(env):
        return "online"
    return "offline"


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    return x


def _stable_run_id(run_dir: Path) -> str:
    """The run's wandb id, created once and stored in the run dir so ``--resume`` continues the same run."""
    path = run_dir / "wandb_run_id"
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(12))
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)
    return run_id


class WandbSink:
    """Weights & Biases through the real ``wandb`` library (imported lazily here, nowhere else in distrl).

    * ``mode``: 'auto' (see :func:`resolve_wandb_mode`), 'online', 'offline' or 'disabled'. Offline runs are
      written to ``run_dir/wandb/offline-run-*/`` and can be uploaded later with ``wandb sync <that dir>``.
    * The run id is stored in ``run_dir/wandb_run_id`` and passed with ``resume="allow"``, so a resumed distrl
      run continues the same wandb run.
    * Every chart uses ``charts/env_steps`` as its x-axis (``define_metric``); ``log(metrics, step)`` adds it.
    * ``init_timeout_s`` bounds the wait for the W&B server in online mode.
    * If an online init fails (no network, bad key) in 'auto' mode it warns and falls back to offline; in
      'online' mode it raises RuntimeError. If even offline init fails in 'auto' mode, it warns and logs
      nothing (metrics still reach the other sinks).
    * ``close()`` finishes the run and, by default, tears down the process's wandb session so the run is
      completely on disk when it returns (see :meth:`close`).

    Usage::

        sink = WandbSink(run_dir, mode="offline", project="distrl", config=cfg.to_dict())
        sink.log({"charts/episode_return": 0.5}, step=1000)
        sink.close()
        sink.local_dir          # run_dir/wandb/offline-run-20260101_120000-<id>
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        mode: str = "auto",
        project: str = "distrl",
        entity: str = "",
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        init_timeout_s: float = 90.0,
        teardown_on_close: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self._teardown_on_close = teardown_on_close
        self.requested_mode = mode
        self.mode: WandbMode = resolve_wandb_mode(mode)
        self.run: Any = None
        self.run_id = ""
        self._local_dir: Path | None = None
        if self.mode == "disabled":
            return
        import wandb

        self._wandb = wandb
        self.run_id = _stable_run_id(self.run_dir)
        kwargs: dict[str, Any] = dict(
            project=project,
            entity=entity or None,
            config=_plain(config or {}),
            name=name or self.run_dir.name,
            dir=str(self.run_dir),
            id=self.run_id,
            resume="allow",
            reinit="create_new",  # several runs per process (tests, sweeps) must not clobber each other
        )
        try:
            self.run = self._init(kwargs, self.mode, init_timeout_s)
        except Exception as e:
            if self.mode == "online" and mode == "auto":
                warnings.warn(
                    f"wandb online init failed ({type(e).__name__}: {e}); falling back to offline mode. "
                    f"Sync later with: wandb sync {self.run_dir / 'wandb'}/offline-run-*",
                    RuntimeWarning,
                    stacklevel=2,
                )
                # A failed init leaves the run id registered in wandb's service process; restart it.
                wandb.teardown()
                self.mode = "offline"
                try:
                    self.run = self._init(kwargs, "offline", init_timeout_s)
                except Exception as e2:
                    self._give_up(e2)
            elif mode == "auto":
                self._give_up(e)
            else:
                hint = (
                    "check the network and your API key (`wandb login` or WANDB_API_KEY), or set "
                    "logging.wandb=offline / auto"
                    if self.mode == "online"
                    else "set logging.wandb=disabled to run without wandb"
                )
                raise RuntimeError(f"wandb {self.mode} init failed: {type(e).__name__}: {e}; {hint}") from e
        if self.run is not None:
            self._local_dir = Path(self.run.dir).parent
            # Charts use env steps as the x-axis rather than wandb's internal per-call step, which would also
            # drop points after a resume (wandb ignores steps lower than the last one it saw).
            self.run.define_metric(ENV_STEPS)
            self.run.define_metric("*", step_metric=ENV_STEPS)

    def _init(self, kwargs: dict[str, Any], mode: str, init_timeout_s: float) -> Any:
        # The timeout bounds the wait for the W&B server; an offline init only waits for wandb's local service
        # process, which can be slow on a loaded machine, so it always gets a generous limit.
        timeout = init_timeout_s if mode == "online" else max(init_timeout_s, 90.0)
        settings = self._wandb.Settings(init_timeout=timeout)
        return self._wandb.init(mode=mode, settings=settings, **kwargs)

    def _give_up(self, e: BaseException) -> None:
        warnings.warn(
            f"wandb init failed ({type(e).__name__}: {e}); continuing without wandb "
            "(metrics still go to metrics.jsonl)",
            RuntimeWarning,
            stacklevel=3,
        )
        self.mode = "disabled"
        self.run = None

    @property
    def local_dir(self) -> Path | None:
        """The run's local directory (``.../wandb/offline-run-*`` or ``.../wandb/run-*``); None if disabled.

        Still set after :meth:`close`, so callers can point ``wandb sync`` at it.
        """
        return self._local_dir

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        clean = check_metrics(metrics, step)
        if self.run is None:
            return
        clean[ENV_STEPS] = float(int(step))
        self.run.log(clean)

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
            if self._teardown_on_close:
                # finish() can return before wandb's service has written the run's transaction log (seen with
                # wandb 0.31 offline runs: a 7-byte .wandb file right after finish). teardown() waits for it,
                # so everything is on disk when close() returns. It also ends any other wandb run this process
                # has open: pass teardown_on_close=False when embedding distrl next to your own wandb runs.
                self._wandb.teardown(exit_code=exit_code)


def read_wandb_records(path: str | Path) -> dict[str, Any]:
    """Read a ``run-<id>.wandb`` transaction log (e.g. of an offline run) without uploading it.

    Returns ``{"config": {key: value}, "history": [{key: value, ...}, ...]}`` with JSON-decoded values. Meant
    for tests and tools that check what a run recorded; ``wandb sync`` is the way to upload it.
    The file is a log of 32 KiB blocks holding length-prefixed protobuf ``Record`` messages (split across
    blocks as FIRST/MIDDLE/LAST chunks) after a 7-byte ``:W&B`` header.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb transaction log (bad header {data[:4]!r})")
    block, header = 32768, 7
    pos, buf = header, b""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if length == 0 and kind == 0:  # zero padding to the end of a block
            pos += left
            continue
        buf += data[pos + header : pos + header + length]
        pos += header + length
        if kind not in (1, 4):  # 1 FULL, 4 LAST: a complete record is in buf
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        buf = b""
        which = record.WhichOneof("record_type")
        if which == "history":
            history.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            )
        elif which in ("run", "config"):
            items = record.run.config.update if which == "run" else record.config.update
            for i in items:
                config[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return {"config": config, "history": history}


# ------------------------------------------------------------------------------------------------------------
# Fan-out and factory
# ------------------------------------------------------------------------------------------------------------


class MultiSink:
    """Sends each ``log`` call to several sinks. Validates once; closes every sink even if one fails.

    Usable as a context manager: leaving it with an exception closes a wandb run with exit code 1.

    Usage::

        with MultiSink([JsonlSink(run_dir), ProgressSink(total_steps=10_000)]) as sinks:
            sinks.log({"charts/episode_return": 1.0}, step=100)
    """

    def __init__(self, sinks: Sequence[MetricSink]) -> None:
        self.sinks: list[MetricSink] = list(sinks)
        self._closed = False

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        clean = check_metrics(metrics, step)  # a bad key fails here, before any sink wrote half a row
        for sink in self.sinks:
            sink.log(clean, step)

    def find(self, kind: type) -> Any:
        """The first sink of a given class, or None (e.g. ``sinks.find(WandbSink).local_dir``)."""
        return next((s for s in self.sinks if isinstance(s, kind)), None)

    def close(self, exit_code: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        first_error: BaseException | None = None
        for sink in self.sinks:
            try:
                if isinstance(sink, WandbSink):
                    sink.close(exit_code=exit_code)
                else:
                    sink.close()
            except Exception as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error

    def __enter__(self) -> MultiSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(exit_code=0 if exc_type is None else 1)


def make_sinks(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    stream: IO[str] | None = None,
    csv_file: bool = False,
) -> MultiSink:
    """The sinks ``cfg.logging`` asks for, writing into ``run_dir``.

    Always: :class:`JsonlSink` and :class:`ProgressSink` (a rich bar when ``logging.progress`` and stdout is a
    terminal, else plain lines every ``logging.log_every_s``). Optional: :class:`CsvSink` (``csv_file=True``),
    :class:`TensorBoardSink` (``logging.tensorboard``), :class:`WandbSink` (unless ``logging.wandb=disabled``;
    named after the run directory).
    """
    run_dir = Path(run_dir)
    lc = cfg.logging
    sinks: list[MetricSink] = [JsonlSink(run_dir)]
    if csv_file:
        sinks.append(CsvSink(run_dir))
    if lc.tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if resolve_wandb_mode(lc.wandb) != "disabled":
        sinks.append(
            WandbSink(
                run_dir,
                mode=lc.wandb,
                project=lc.wandb_project,
                entity=lc.wandb_entity,
                config=cfg.to_dict(),
                name=run_dir.name,
            )
        )
    # Last, so wandb's stdout wrapping (set up by wandb.init) is already in place when the bar starts.
    sinks.append(
        ProgressSink(cfg.runtime.total_env_steps, rich=lc.progress, interval_s=lc.log_every_s, stream=stream)
    )
    return MultiSink(sinks)
