"""Atomic, verified checkpoints of numpy arrays plus a JSON manifest (used by :class:`ReplayShard`).

Layout of a checkpoint directory::

    <dir>/manifest.json       format, schema version, shard counters, leaf schema, and per file:
                              shape, dtype, byte count and CRC-32 of the array data; a CRC-32 of the
                              manifest itself (``manifest_crc32``)
    <dir>/a000.npy ...        one plain .npy file per array (no pickle, loaded with allow_pickle=False rules)

Writing goes to a hidden temporary sibling directory which is fsync'ed and then renamed into place; an
existing checkpoint at the target is first renamed aside and removed only after the new one is in place. A
reader never sees a half-written checkpoint under the target name. (If the process dies between the two
renames, the previous checkpoint survives as ``.<name>.old-*`` next to the target; :func:`read_manifest`
names it.)

Reading checks everything before any state changes: the manifest parses, matches its own checksum and has the
expected format and version; every file exists, has the exact expected size, an .npy header with the manifest's
shape and dtype, and data whose CRC-32 matches. Arrays are read straight into caller-provided destination
arrays (no second copy of a multi-GB buffer). Any failure raises :class:`CheckpointError` naming the file.

Usage::

    save_arrays(path, manifest={"counters": {...}}, arrays={"obs/glyphs": arr[:size]})
    manifest = read_manifest(path, expected_format="distrl.replay_shard", expected_version=1)
    load_array_into(path, manifest["files"]["obs/glyphs"], dest[:size])
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
_MANIFEST_CRC = "manifest_crc32"  # CRC-32 of the manifest's other entries (sorted-key JSON)
_CHUNK = 64 << 20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not match what the loader expects."""


def _crc32(arr: np.ndarray) -> int:
    view = memoryview(np.ascontiguousarray(arr)).cast("B")
    crc = 0
    for start in range(0, len(view), _CHUNK):
        crc = zlib.crc32(view[start : start + _CHUNK], crc)
    return crc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_arrays(
    path: str | Path, manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, fsync: bool = True
) -> Path:
    """Atomically write ``arrays`` and ``manifest`` (plus a ``files`` table) to directory ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, Any] = {}
        for i, (name, arr) in enumerate(arrays.items()):
            arr = np.ascontiguousarray(arr)
            if arr.dtype.hasobject:
                raise CheckpointError(f"array {name!r}: object arrays cannot be checkpointed")
            fname = f"a{i:03d}.npy"
            with open(tmp / fname, "wb") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
                file_size = f.tell()
            files[name] = {
                "file": fname,
                "shape": list(arr.shape),
                "dtype": arr.dtype.str,
                "nbytes": int(arr.nbytes),
                "file_size": int(file_size),
                "crc32": _crc32(arr),
            }
        full = {**manifest, "files": files}
        full[_MANIFEST_CRC] = _manifest_crc(full)
        with open(tmp / MANIFEST, "w") as f:
            json.dump(full, f, indent=1, sort_keys=True)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if fsync:
            _fsync_dir(tmp)
        old: Path | None = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
        os.rename(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | Path, *, expected_format: str, expected_version: int) -> dict[str, Any]:
    """Parse and sanity-check ``<path>/manifest.json``. Raises CheckpointError naming the file."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        leftovers = sorted(p.name for p in path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f" (an interrupted save left {leftovers} beside it)" if leftovers else ""
        raise CheckpointError(f"replay checkpoint directory {path} does not exist{hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{mpath}: missing (not a complete replay checkpoint)") from e
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{mpath}: corrupt or truncated manifest: {e}") from e
    except OSError as e:
        raise CheckpointError(f"{mpath}: cannot be read: {e}") from e
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{mpath}: expected a JSON object")
    if manifest.get("format") != expected_format:
        raise CheckpointError(f"{mpath}: format {manifest.get('format')!r}, expected {expected_format!r}")
    if manifest.get("schema_version") != expected_version:
        raise CheckpointError(
            f"{mpath}: checkpoint schema_version {manifest.get('schema_version')!r} is not supported "
            f"(this code reads version {expected_version})"
        )
    # after format and version: another version may checksum differently
    if _MANIFEST_CRC in manifest:  # absent in checkpoints written before it existed
        stored = manifest.pop(_MANIFEST_CRC)
        if stored != _manifest_crc(manifest):
            raise CheckpointError(f"{mpath}: manifest checksum mismatch (corrupt file)")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{mpath}: no 'files' table")
    return manifest


def _manifest_crc(manifest: Mapping[str, Any]) -> int:
    return zlib.crc32(json.dumps(manifest, sort_keys=True).encode())


def _entry(path: Path, entry: Any) -> tuple[Path, int, tuple[int, ...], np.dtype]:
    """(file, file size, shape, dtype) of a files-table entry; CheckpointError if it is malformed."""
    try:
        name = entry["file"]
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"bad file name {name!r}")
        shape = tuple(int(s) for s in entry["shape"])
        return path / name, int(entry["file_size"]), shape, np.dtype(entry["dtype"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / MANIFEST}: malformed files entry {entry!r} ({e})") from e


def check_file(path: str | Path, entry: Mapping[str, Any]) -> Path:
    """Cheap pre-check of one array file (exists, exact size) so a bad checkpoint fails before any loading."""
    fpath, file_size, _, _ = _entry(Path(path), entry)
    if not fpath.is_file():
        raise CheckpointError(f"{fpath}: missing from the checkpoint")
    size = fpath.stat().st_size
    if size != file_size:
        raise CheckpointError(f"{fpath}: size {size} bytes, manifest says {entry['file_size']} (truncated?)")
    return fpath


def load_array_into(path: str | Path, entry: Mapping[str, Any], dest: np.ndarray) -> None:
    """Read one array file into ``dest`` (C-contiguous, matching shape/dtype), verifying header and CRC-32."""
    fpath = check_file(path, entry)
    _, _, shape, dtype = _entry(Path(path), entry)
    if tuple(dest.shape) != shape or dest.dtype != dtype or not dest.flags.c_contiguous:
        raise CheckpointError(
            f"{fpath}: holds {shape} {dtype}, but the loader expects {tuple(dest.shape)} {dest.dtype}"
        )
    with open(fpath, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                fshape, fortran, fdtype = np.lib.format.read_array_header_1_0(f)
            else:
                fshape, fortran, fdtype = np.lib.format.read_array_header_2_0(f)
        except Exception as e:  # ValueError, but a damaged header dict can raise SyntaxError or TokenError too
            raise CheckpointError(f"{fpath}: not a valid .npy file: {type(e).__name__}: {e}") from e
        if fdtype.hasobject:
            raise CheckpointError(f"{fpath}: object arrays are refused (would need pickle)")
        if tuple(fshape) != shape or fdtype != dtype or fortran:
            raise CheckpointError(f"{fpath}: .npy header says {tuple(fshape)} {fdtype}, manifest says {shape} {dtype}")
        view = memoryview(dest).cast("B")
        got = 0
        while got < len(view):
            k = f.readinto(view[got : got + _CHUNK])
            if not k:
                break
            got += k
        if got != len(view) or f.read(1):
            raise CheckpointError(f"{fpath}: data is {got} bytes, expected {len(view)} (truncated or padded)")
    crc = _crc32(dest)
    stored = entry.get("crc32") if isinstance(entry, Mapping) else None
    if not isinstance(stored, int) or crc != stored:
        raise CheckpointError(f"{fpath}: checksum mismatch (CRC-32 {crc:#010x}, manifest {stored!r})")
