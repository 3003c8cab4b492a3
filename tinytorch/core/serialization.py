"""Checkpoints: weights in a .npz file, config and an index of the arrays in a .json beside it.

    save_checkpoint("runs/mlp", model, config={"hidden": 64})  -> runs/mlp.npz, runs/mlp.json
    state, config = load_checkpoint("runs/mlp")
    model.load_state_dict(state)

No pickle anywhere: arrays load with allow_pickle=False, the config is JSON. Both files are
written atomically (temp file + rename), so an interrupted save leaves the old checkpoint.
A missing, corrupt or mismatched pair gives a CheckpointError that says which and why.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "tinytorch-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match its index."""


def _paths(path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".npz", ".json") else path
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path, model_or_state, config: dict | None = None, metadata: dict | None = None) -> Path:
    """Write `<path>.npz` (arrays) and `<path>.json` (config, metadata, array index); returns the .npz path."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else dict(model_or_state)
    arrays = {name: np.asarray(a) for name, a in state.items()}
    for name, a in arrays.items():
        if a.dtype == object:
            raise TypeError(f"checkpoint array {name!r} has dtype object; only numeric arrays can be saved")
    index = {
        "format": FORMAT,
        "version": VERSION,
        "config": config or {},
        "metadata": metadata or {},
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
    }
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"  # fails here, before writing, if not JSON-able
    npz_path, json_path = _paths(path)
    _atomic_write(npz_path, lambda f: np.savez(f, **arrays))
    _atomic_write(json_path, lambda f: f.write(text.encode()))
    return npz_path


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by save_checkpoint: (state dict of arrays, config)."""
    state, index = _load(path)
    return state, index["config"]


def load_checkpoint_index(path) -> dict:
    """The whole JSON index (format, version, config, metadata, arrays)."""
    return _load(path)[1]


def _load(path) -> tuple[dict[str, np.ndarray], dict]:
    npz_path, json_path = _paths(path)
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
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            state = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint weights {npz_path} are corrupt or unreadable: {exc}") from exc
    expected = index.get("arrays", {})
    if set(state) != set(expected):
        raise CheckpointError(
            f"{npz_path} does not match its index {json_path.name}: "
            f"missing {sorted(set(expected) - set(state)) or 'none'}, "
            f"unexpected {sorted(set(state) - set(expected)) or 'none'}"
        )
    for name, a in state.items():
        want = expected[name]
        if list(a.shape) != want["shape"] or str(a.dtype) != want["dtype"]:
            raise CheckpointError(
                f"array {name!r} in {npz_path} is {a.dtype}{list(a.shape)}, its index says {want['dtype']}{want['shape']}"
            )
    return state, index
