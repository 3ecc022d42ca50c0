"""Training progress on the terminal: a rich progress bar on a TTY, plain periodic lines otherwise.

``rich`` is imported only when the bar is started.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from distrl.logging.base import (
    EPISODE_RETURN,
    LEARNER_UPDATES,
    LEARNER_UPDATES_PER_S,
    SPS,
    SUCCESS_RATE,
    check_metrics,
)
from distrl.logging.meters import AverageRate, RateMeter


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
        clean = check_metrics(metrics, step)
        if clean and all(k.startswith("eval/") for k in clean):
            return  # evaluation rows come at their own times: they would skew the rates derived from steps
        self._update_state(clean, int(step))
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
