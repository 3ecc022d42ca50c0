"""The file and TensorBoard sinks, :class:`MultiSink` (fan-out to several sinks) and :func:`make_sinks` (the
set of sinks a config asks for).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from distrl.logging.base import MetricSink, check_metrics
from distrl.logging.progress import ProgressSink
from distrl.logging.wandb_sink import WandbSink, resolve_wandb_mode

if TYPE_CHECKING:
    from distrl.config import ExperimentConfig


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
# Fan-out and factory
# ------------------------------------------------------------------------------------------------------------


class MultiSink:
    """Sends each ``log`` call to several sinks. Validates once; closes every sink even if one fails.
    ``log_video`` goes to the sinks that have that method (:class:`WandbSink`).

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

    def log_video(self, key: str, path: str | Path, step: int) -> None:
        """Send a video file to the sinks that take media (wandb); the others (jsonl, csv, progress,
        TensorBoard) skip it. ``key`` is namespaced like a metric key (e.g. ``eval/video``)."""
        check_metrics({key: 0.0}, step)
        for sink in self.sinks:
            log_video = getattr(sink, "log_video", None)
            if log_video is not None:
                log_video(key, path, step)

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
