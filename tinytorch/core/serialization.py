"""Checkpoints: weights in a .npz file, config and an index of the arrays in a .json beside it.

    save_checkpoint("runs/mlp", model, config={"hidden": 64})  -> runs/mlp.npz, runs/mlp.json
    state, config = load_checkpoint("runs/mlp")
    model.load_state_dict(state)

No pickle anywhere: arrays load with allow_pickle=False, the config is JSON.

A save is all or nothing. The index records the sha256 of the weights it describes, and the
index is the commit point: the new weights are first written beside the old ones (a hidden
`.<name>.<sha>.npz.next`), then the index, then the weights are renamed into place. A save
killed before the index is written leaves the old pair; one killed after it leaves the new
index and its weights in the `.next` file, which loading uses. Weights that do not match
their index's checksum are never loaded as if they did.

Reading checks every array's header (names, dtypes, shapes) against the index and against
the bytes the file really holds before any array is allocated, so a tiny file that claims a
huge shape is an error, not a giant allocation. A missing, corrupt or mismatched pair gives
a CheckpointError that says which and why.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "tinytorch-checkpoint"
VERSION = 1
# deflate cannot expand data by more than about 1032:1; a zip member claiming more is forged
_MAX_DEFLATE_RATIO = 1100


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match its index."""


def checkpoint_paths(path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".npz", ".json") else path
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale_temps(folder: Path, pattern: str) -> None:
    """Delete the temp files `.<name>.<pid>.<random>.tmp` matching `pattern` whose writer was
    killed (its process is gone); a live writer's temp file is left alone."""
    for tmp in folder.glob(pattern):
        pid = tmp.name.split(".")[-3]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _file_mode(path: Path) -> int:
    """The mode a rewritten `path` keeps: its current one, or the umask default for a new file."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: Path, write) -> None:
    """Replace `path` with what write(binary_file) writes, all at once (temp file, fsync, rename).
    The file keeps its mode (a new one gets the umask default, not mkstemp's 0600); temp files
    of earlier writers that were killed are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent, f".{path.name}.*.tmp")
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pending_path(npz_path: Path, sha: str) -> Path:
    return npz_path.with_name(f".{npz_path.name}.{sha[:16]}.next")


def _npz_headers(npz_path: Path, error=CheckpointError) -> dict[str, tuple[tuple, np.dtype]]:
    """{name: (shape, dtype)} of every array in a .npz, read from the .npy headers without
    loading any data; `error` (an exception class) if the file is not a well-formed .npz whose
    headers agree with the bytes it holds."""
    def bad(why):
        return error(f"{npz_path} is corrupt or unreadable: {why}")

    headers = {}
    try:
        with zipfile.ZipFile(npz_path) as z:
            for info in z.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else None
                if not name:
                    raise bad(f"member {info.filename!r} is not a .npy array")
                if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
                    raise bad(f"member {info.filename!r} claims {info.file_size} bytes but stores {info.compress_size}")
                if info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1) + 4096:
                    raise bad(f"member {info.filename!r} claims {info.file_size} bytes from {info.compress_size} compressed")
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise bad(f"array {name!r} has .npy format version {version}, expected 1.0 or 2.0")
                    header_bytes = f.tell()
                if dtype.hasobject:
                    raise bad(f"array {name!r} has dtype object (it would need pickle, which is refused)")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if header_bytes + nbytes != info.file_size:
                    raise bad(f"array {name!r} claims shape {tuple(shape)} {dtype} ({nbytes} bytes) "
                              f"but the file holds {info.file_size - header_bytes} bytes of data")
                headers[name] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        if isinstance(exc, error):
            raise
        raise bad(exc) from exc
    return headers


def read_npz(npz_path: Path, error=CheckpointError) -> dict[str, np.ndarray]:
    """All arrays of a .npz whose headers _npz_headers has checked; never unpickles."""
    _npz_headers(npz_path, error)
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise error(f"{npz_path} is corrupt or unreadable: {exc}") from exc


def save_checkpoint(path, model_or_state, config: dict | None = None, metadata: dict | None = None) -> Path:
    """Write `<path>.npz` (arrays) and `<path>.json` (config, metadata, array index, sha256 of
    the .npz), all or nothing (see the module docstring); returns the .npz path."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else dict(model_or_state)
    arrays = {name: np.asarray(a) for name, a in state.items()}
    for name, a in arrays.items():
        if a.dtype == object:
            raise TypeError(f"checkpoint array {name!r} has dtype object; only numeric arrays can be saved")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    index = {
        "format": FORMAT,
        "version": VERSION,
        "config": config or {},
        "metadata": metadata or {},
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
        "sha256": sha,
    }
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"  # fails here, before writing, if not JSON-able
    npz_path, json_path = checkpoint_paths(path)
    pending = _pending_path(npz_path, sha)
    mode = _file_mode(npz_path)
    atomic_write(pending, lambda f: f.write(data))
    os.chmod(pending, mode)
    atomic_write(json_path, lambda f: f.write(text.encode()))  # the commit point
    os.replace(pending, npz_path)
    for stale in npz_path.parent.glob(f".{npz_path.name}.*.next"):  # left by saves killed earlier
        stale.unlink(missing_ok=True)
    _remove_stale_temps(npz_path.parent, f"..{npz_path.name}.*.tmp")
    return npz_path


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by save_checkpoint: (state dict of arrays, config)."""
    state, index = _load(path)
    return state, index["config"]


def load_checkpoint_index(path) -> dict:
    """The whole JSON index (format, version, config, metadata, arrays, sha256)."""
    return _load(path)[1]


def _load(path) -> tuple[dict[str, np.ndarray], dict]:
    npz_path, json_path = checkpoint_paths(path)
    for p in (npz_path, json_path):
        if not p.exists():
            raise FileNotFoundError(f"checkpoint file {p} does not exist (a checkpoint is a .npz and a .json)")
    try:
        index = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint index {json_path} is not valid JSON: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a tinytorch checkpoint index (format {FORMAT!r} expected)")
    if index.get("version") != VERSION:
        raise CheckpointError(f"{json_path} has checkpoint version {index.get('version')!r}, expected {VERSION}")
    expected = index.get("arrays")
    if not isinstance(expected, dict) or not all(
            isinstance(w, dict) and isinstance(w.get("shape"), list) and isinstance(w.get("dtype"), str)
            for w in expected.values()):
        raise CheckpointError(f"{json_path}: 'arrays' must map each name to {{'shape': [...], 'dtype': '...'}}")
    want_sha = index.get("sha256")  # checkpoints written before checksums have none
    if want_sha is not None and not isinstance(want_sha, str):
        raise CheckpointError(f"{json_path}: 'sha256' must be a hex string, got {want_sha!r}")
    source, checksum_ok = npz_path, want_sha is None or _sha256(npz_path) == want_sha
    if not checksum_ok:
        pending = _pending_path(npz_path, want_sha)
        if pending.is_file() and _sha256(pending) == want_sha:  # a save was killed just before its last rename
            source, checksum_ok = pending, True
    headers = _npz_headers(source)
    if set(headers) != set(expected):
        raise CheckpointError(
            f"{npz_path} does not match its index {json_path.name}: "
            f"missing {sorted(set(expected) - set(headers)) or 'none'}, "
            f"unexpected {sorted(set(headers) - set(expected)) or 'none'}"
        )
    for name, (shape, dtype) in headers.items():
        want = expected[name]
        if list(shape) != want["shape"] or str(dtype) != want["dtype"]:
            raise CheckpointError(
                f"array {name!r} in {npz_path} is {dtype}{list(shape)}, its index says {want['dtype']}{want['shape']}"
            )
    if not checksum_ok:
        raise CheckpointError(
            f"{npz_path} does not match the sha256 recorded in {json_path.name}: the weights were changed "
            "after the index was written (a save interrupted by another program, or a hand edit); "
            "save the checkpoint again"
        )
    return read_npz(source), index
