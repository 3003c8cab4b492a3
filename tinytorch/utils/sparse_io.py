"""The file format of module 16's compressed models: reading, writing and checking it.

A compressed model is two files, and never a pickle (the pair and the write-then-rename are the
foundation's `checkpoint_paths` and `atomic_write`):

- `<path>.npz` (np.savez_compressed) with four arrays shared by all layers: `values` (int8 or
  float32: the non-zeros of every Linear/Conv2d weight), `gaps` (uint8: each non-zero's distance
  to the previous one, see module 16's encode_relative), `scales` (float32, one per int8 weight)
  and `dense` (float32: biases and every other parameter);
- `<path>.json`: {"format": FORMAT, "version": VERSION, "architecture": describe_model(model),
  "tensors": [{name, shape, encoding, offset, count, scale_index (sparse-int8 only)}, ...]}.

Module 16 builds what goes into them (save_compressed, load_compressed, the gap encoding); this
file holds the architecture description, the index check and the file I/O.

    >>> spec = describe_model(tc.Sequential(tc.Linear(4, 3), tc.ReLU()))
    >>> spec["children"][0]
    {'type': 'Linear', 'in_features': 4, 'out_features': 3, 'bias': True}
    >>> [type(m).__name__ for m in build_model(spec)]
    ['Linear', 'ReLU']
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import tinytorch.core as tc
from tinytorch.core.serialization import atomic_write, checkpoint_paths, read_npz

__all__ = ["FORMAT", "VERSION", "LAYERS", "ENCODINGS", "ARRAY_DTYPES", "describe_model", "build_model",
           "check_index", "read_compressed", "write_compressed", "file_bytes"]

FORMAT, VERSION = "tinytorch-compressed", 1

LAYERS = {"Linear": tc.Linear, "Conv2d": tc.Conv2d, "ReLU": tc.ReLU, "GELU": tc.GELU,
          "MaxPool2d": tc.MaxPool2d, "Flatten": tc.Flatten, "Dropout": tc.Dropout}


def describe_model(module) -> dict:
    """A JSON-able description of a Sequential (nested ones too) of the layers in LAYERS."""
    if isinstance(module, tc.Sequential):
        return {"type": "Sequential", "children": [describe_model(m) for m in module]}
    if isinstance(module, tc.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if isinstance(module, tc.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": list(module.padding), "bias": module.bias is not None}
    if isinstance(module, tc.MaxPool2d):
        return {"type": "MaxPool2d", "kernel_size": list(module.kernel_size), "stride": list(module.stride)}
    if isinstance(module, tc.Flatten):
        return {"type": "Flatten", "start_dim": module.start_dim}
    if isinstance(module, tc.Dropout):
        return {"type": "Dropout", "p": module.p}
    if type(module) in (tc.ReLU, tc.GELU):
        return {"type": type(module).__name__}
    raise TypeError(f"save_compressed stores Sequential models of {sorted(LAYERS)}; "
                    f"cannot describe a {type(module).__name__}")


def build_model(spec: dict):
    """The (freshly initialized) module a describe_model() dict stands for."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "Sequential":
        if not isinstance(spec.get("children"), list):
            raise ValueError(f"a Sequential in a compressed model needs a 'children' list, got {spec.get('children')!r}")
        return tc.Sequential(*[build_model(s) for s in spec["children"]])
    if kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r} in a compressed model; expected Sequential or {sorted(LAYERS)}")
    try:
        return LAYERS[kind](**{k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"})
    except (TypeError, ValueError) as exc:  # a missing, unknown or ill-typed field of the layer
        raise ValueError(f"bad {kind} layer {spec} in a compressed model: {exc}") from None


ARRAY_DTYPES = {"values": (np.int8, np.float32), "gaps": (np.uint8,), "scales": (np.float32,), "dense": (np.float32,)}
ENCODINGS = {"dense-float32": np.float32, "sparse-int8": np.int8, "sparse-float32": np.float32}


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_index(info: dict, arrays: dict, json_path) -> None:
    """An edited or corrupt file must be a ValueError naming the field, never a model with weights
    silently wrong or a KeyError/IndexError: the four arrays are there with their dtypes; every
    entry has a name, a shape, a known encoding that matches the values' dtype, a scale index
    inside `scales` pointing at a finite scale > 0 (int8), and a slice inside its shared array;
    the entries cover each array exactly."""
    for key in ("architecture", "tensors"):
        if key not in info:
            raise ValueError(f"{json_path} has no {key!r} entry")
    if not isinstance(info["tensors"], list) or not all(isinstance(t, dict) for t in info["tensors"]):
        raise ValueError(f"{json_path}: 'tensors' must be a list of objects")
    for key, dtypes in ARRAY_DTYPES.items():
        if key not in arrays:
            raise ValueError(f"{json_path.with_suffix('.npz')} has no {key!r} array (it holds {sorted(arrays)})")
        if arrays[key].ndim != 1 or arrays[key].dtype not in dtypes:
            raise ValueError(f"array {key!r} must be 1-D of dtype {' or '.join(np.dtype(d).name for d in dtypes)}, "
                             f"got {arrays[key].dtype}{list(arrays[key].shape)}")
    scales = arrays["scales"]
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise ValueError(f"array 'scales' must hold finite scales > 0, got {scales[~(np.isfinite(scales) & (scales > 0))][:3].tolist()}")
    if len(arrays["gaps"]) != len(arrays["values"]):
        raise ValueError(f"arrays 'gaps' and 'values' must have one entry each per stored value, "
                         f"got {len(arrays['gaps'])} and {len(arrays['values'])}")
    names = set()
    for t in info["tensors"]:
        name = t.get("name")
        if not isinstance(name, str) or name in names:
            raise ValueError(f"{json_path}: tensor 'name' must be a unique string, got {name!r}")
        names.add(name)
        shape, enc = t.get("shape"), t.get("encoding")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise ValueError(f"{json_path}: tensor {name!r} has 'shape' {shape!r}; expected a list of ints >= 0")
        if enc not in ENCODINGS:
            raise ValueError(f"{json_path}: tensor {name!r} has 'encoding' {enc!r}; expected one of {sorted(ENCODINGS)}")
        if enc != "dense-float32" and arrays["values"].dtype != ENCODINGS[enc]:
            raise ValueError(f"{json_path}: tensor {name!r} has 'encoding' {enc!r} but the 'values' array is "
                             f"{arrays['values'].dtype}")
        if enc == "sparse-int8":
            k = t.get("scale_index")
            if not _is_count(k) or k >= len(scales):
                raise ValueError(f"{json_path}: tensor {name!r} has 'scale_index' {k!r}; expected an int in "
                                 f"[0, {len(scales)})")
        elif "scale_index" in t:
            raise ValueError(f"{json_path}: tensor {name!r} is {enc!r} and has a 'scale_index'; only sparse-int8 has one")
    used = {}
    for t in info["tensors"]:
        array = "dense" if t.get("encoding") == "dense-float32" else "values"
        o, n = t.get("offset"), t.get("count")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (o, n)) \
                or array not in arrays or o + n > len(arrays[array]):
            raise ValueError(f"{json_path}: tensor {t.get('name')!r} has offset {o!r} and count {n!r}, "
                             f"outside its {array!r} array")
        used[array] = used.get(array, 0) + n
    for array, n in used.items():
        if n != len(arrays[array]):
            raise ValueError(f"{json_path}: the tensors use {n} entries of {array!r}, the file holds {len(arrays[array])}")
    for t in info["tensors"]:
        if t["encoding"] == "dense-float32" and t["count"] != int(np.prod(t["shape"])):
            raise ValueError(f"{json_path}: tensor {t['name']!r} has 'count' {t['count']} but 'shape' {t['shape']} "
                             f"holds {int(np.prod(t['shape']))} values")


def write_compressed(path, arrays: dict, architecture: dict, tensors: list) -> Path:
    """Write <path>.npz (the four `arrays`, zip-deflated) and <path>.json (the index, without
    spaces: it is part of the size), each atomically (an interrupted save leaves the old file).
    Returns the .npz path."""
    missing = sorted(set(ARRAY_DTYPES) - set(arrays))
    if missing:
        raise ValueError(f"a compressed model needs the arrays {sorted(ARRAY_DTYPES)}; {missing} missing")
    text = json.dumps({"format": FORMAT, "version": VERSION, "architecture": architecture, "tensors": tensors},
                      separators=(",", ":"))
    npz_path, json_path = checkpoint_paths(path)
    atomic_write(npz_path, lambda f: np.savez_compressed(f, **arrays))
    atomic_write(json_path, lambda f: f.write(text.encode()))
    return npz_path


def read_compressed(path) -> tuple[dict, dict]:
    """(index, arrays) of a model written by write_compressed, both checked: FileNotFoundError when a
    file is missing, ValueError naming the problem when either is not a valid compressed model
    (the arrays are read with allow_pickle=False, their headers checked against the file's bytes)."""
    npz_path, json_path = checkpoint_paths(path)
    for p in (npz_path, json_path):
        if not p.exists():
            raise FileNotFoundError(f"compressed model file {p} does not exist (a compressed model is a .npz and a .json)")
    try:
        info = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{json_path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(f"{json_path} is not a {FORMAT} version {VERSION} index")
    arrays = read_npz(npz_path, ValueError)
    check_index(info, arrays, json_path)
    return info, arrays


def file_bytes(path) -> int:
    """Bytes on disk of a model saved by save_compressed: its .npz plus its .json."""
    return sum(p.stat().st_size for p in checkpoint_paths(path))
