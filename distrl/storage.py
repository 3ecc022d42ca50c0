"""Where a run's outputs live: a local or shared-filesystem directory, or a URI of any filesystem fsspec knows.

``runtime.run_dir`` may be a path (made absolute here, so outputs never land in a job's temporary working
directory) or a URI such as ``s3://bucket/runs`` or ``gs://bucket/runs`` (fsspec needs the matching package,
``s3fs`` / ``gcsfs``, and reads credentials from the environment as usual). ``file://`` URIs and ``local://``
are plain paths.

With a path every component writes into the run directory directly (on a multi-node cluster it must be a shared
filesystem, or the components that write must sit on the node that has it). With a URI, components write to a
local *staging* directory on their node and push what they wrote to the URI through fsspec (``fs.put``), the way
Ray Train's ``storage_path`` uploads through pyarrow's filesystems: the driver its metrics, wandb run and learner
checkpoint, each replay shard its own checkpoint. ``--resume URI`` pulls the run back the same way.

Usage::

    loc = resolve_location("runs")                      # '/abs/cwd/runs' ('~/distrl/runs' inside a Ray job)
    join(loc, "my-run")                                 # '/abs/cwd/runs/my-run'
    is_remote("s3://bucket/runs")                       # True
    push("/tmp/stage/my-run", "s3://bucket/runs/my-run")  # upload (no-op for a local location)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_LOCAL_PROTOCOLS = ("file", "local")


def _protocol(location: str) -> str:
    return location.split("://", 1)[0].lower() if "://" in location else ""


def is_remote(location: str | Path) -> bool:
    """True for a URI whose filesystem is not the local one (``s3://``, ``gs://``, ``memory://``, ...)."""
    proto = _protocol(str(location))
    return bool(proto) and proto not in _LOCAL_PROTOCOLS


def in_ray_job_copy(cwd: str | Path) -> bool:
    """True when ``cwd`` is the temporary copy of ``ray job submit --working-dir`` that Ray deletes."""
    parts = Path(cwd).parts
    return "runtime_resources" in parts or any(p.startswith("_ray_pkg_") for p in parts)


def resolve_location(run_dir: str | Path, cwd: str | Path | None = None) -> str:
    """``runtime.run_dir`` as an absolute path or a remote URI (trailing slashes dropped).

    A relative path is taken relative to ``cwd`` (default: the working directory), except inside a Ray job's
    temporary working directory, where it is taken relative to ``~/distrl`` (``runs`` -> ``~/distrl/runs``).
    """
    loc = str(run_dir)
    if is_remote(loc):
        return loc.rstrip("/")
    if _protocol(loc):
        loc = loc.split("://", 1)[1]
    path = Path(loc).expanduser()
    if not path.is_absolute():
        base = Path(cwd) if cwd is not None else Path.cwd()
        if in_ray_job_copy(base):
            base = Path.home() / "distrl"
        path = base / path
    return str(Path(os.path.normpath(path)))


def join(location: str, *parts: str) -> str:
    """``location`` / parts, for a path or a URI."""
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)]) if is_remote(location) else str(
        Path(location, *parts)
    )


def filesystem(location: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``location`` and the path inside it."""
    import fsspec

    return fsspec.core.url_to_fs(location)


def exists(location: str) -> bool:
    if not is_remote(location):
        return Path(location).exists()
    fs, path = filesystem(location)
    return bool(fs.exists(path))


def read_text(location: str) -> str:
    if not is_remote(location):
        return Path(location).read_text()
    fs, path = filesystem(location)
    with fs.open(path, "r") as f:
        return f.read()


def push(local: str | Path, location: str) -> None:
    """Copy the file or directory ``local`` to ``location`` (a no-op when ``location`` is not remote)."""
    if not is_remote(location) or not Path(local).exists():
        return
    fs, path = filesystem(location)
    if Path(local).is_dir():
        fs.makedirs(path, exist_ok=True)
        # put(dir/, dest) copies the directory's *contents* into dest (fsspec's trailing-slash rule)
        fs.put(str(local).rstrip("/") + "/", path, recursive=True)
    else:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), path)


def pull(location: str, local: str | Path) -> bool:
    """Copy ``location`` (file or directory) to ``local``; False when it does not exist (or is not remote)."""
    if not is_remote(location):
        return False
    fs, path = filesystem(location)
    if not fs.exists(path):
        return False
    Path(local).mkdir(parents=True, exist_ok=True) if fs.isdir(path) else Path(local).parent.mkdir(
        parents=True, exist_ok=True
    )
    if fs.isdir(path):
        fs.get(path.rstrip("/") + "/", str(local), recursive=True)
    else:
        fs.get_file(path, str(local))
    return True


def staging_dir(location: str) -> Path:
    """The local directory where a remote run location is staged on this node: ``~/.cache/distrl/stage/...``
    (``DISTRL_STAGING_DIR`` overrides the root); for a local location, the location itself."""
    if not is_remote(location):
        return Path(location)
    root = Path(os.environ.get("DISTRL_STAGING_DIR") or Path.home() / ".cache" / "distrl" / "stage")
    proto, rest = location.split("://", 1)
    return root / proto / rest.strip("/")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a local file atomically: ``write(f)`` into a temp file in the same directory, fsync, then rename
    over ``path``; on any error the temp file is removed and ``path`` is left as it was.

    Usage::

        atomic_write("ckpt/learner.pt", lambda f: torch.save(state, f))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
