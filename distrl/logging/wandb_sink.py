"""Weights & Biases: mode resolution, :class:`WandbSink` and a reader for ``.wandb`` transaction logs.

This is the only distrl module that imports ``wandb``, and it does so lazily (inside :class:`WandbSink` when a
run starts, and inside :func:`read_wandb_records`), so importing it is cheap.
"""

from __future__ import annotations

import json
import netrc
import os
import re
import secrets
import string
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from distrl.logging.base import ENV_STEPS, check_metrics

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
    * ``log_video(key, path, step)`` logs a video file as ``wandb.Video`` (the in-training evaluation's
      ``eval/video``).
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

    def log_video(self, key: str, path: str | Path, step: int) -> None:
        """Log a video file (mp4, gif, webm or ogg) as ``wandb.Video`` under ``key`` at env step ``step``.

        The file is copied into the run (offline runs too; ``wandb sync`` uploads it). The key follows the
        metric namespaces (e.g. ``eval/video``)."""
        check_metrics({key: 0.0}, step)
        if self.run is None:
            return
        self.run.log({key: self._wandb.Video(str(path)), ENV_STEPS: float(int(step))})

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
