"""Every hand edit or corruption of a save_compressed file pair is a ValueError naming the field,
never a model that loads silently wrong, and never a KeyError, IndexError or BadZipFile."""

import io
import json
import zipfile

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.compression import load_compressed, prune_model, save_compressed


@pytest.fixture
def saved(tmp_path):
    tc.manual_seed(0)
    model = prune_model(tc.Sequential(tc.Linear(6, 5), tc.ReLU(), tc.Linear(5, 3)), 0.5)
    save_compressed(model, tmp_path / "m")
    return tmp_path / "m"


def edit_index(path, change):
    info = json.loads(path.with_suffix(".json").read_text())
    change(info)
    path.with_suffix(".json").write_text(json.dumps(info))


def edit_arrays(path, change):
    with np.load(path.with_suffix(".npz")) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez_compressed(path.with_suffix(".npz"), **arrays)


def sparse(info):
    return next(t for t in info["tensors"] if t["encoding"].startswith("sparse"))


def dense(info):
    return next(t for t in info["tensors"] if t["encoding"] == "dense-float32")


INDEX_EDITS = {
    "unknown encoding": (lambda i: sparse(i).update(encoding="sparse-int4"), "'encoding'"),
    "relabelled dtype": (lambda i: sparse(i).update(encoding="sparse-float32"), "'encoding'"),
    "negative scale index": (lambda i: sparse(i).update(scale_index=-1), "'scale_index'"),
    "scale index past the end": (lambda i: sparse(i).update(scale_index=99), "'scale_index'"),
    "scale index missing": (lambda i: sparse(i).pop("scale_index"), "'scale_index'"),
    "scale index a string": (lambda i: sparse(i).update(scale_index="0"), "'scale_index'"),
    "name missing": (lambda i: sparse(i).pop("name"), "'name'"),
    "duplicate name": (lambda i: dense(i).update(name=sparse(i)["name"]), "'name'"),
    "shape missing": (lambda i: sparse(i).pop("shape"), "'shape'"),
    "shape negative": (lambda i: sparse(i).update(shape=[-5, 6]), "'shape'"),
    "shape relabelled": (lambda i: dense(i).update(shape=[1, dense(i)["shape"][0]]), "shape"),
    "dense count vs shape": (lambda i: dense(i).update(shape=[dense(i)["shape"][0] + 1]), "'count'"),
    "encoding missing": (lambda i: sparse(i).pop("encoding"), "'encoding'"),
    "offset negative": (lambda i: sparse(i).update(offset=-1), "offset"),
    "count a float": (lambda i: sparse(i).update(count=1.5), "count"),
    "tensors not a list": (lambda i: i.update(tensors={"a": 1}), "'tensors'"),
    "tensor not an object": (lambda i: i["tensors"].append(3), "'tensors'"),
    "tensors missing": (lambda i: i.pop("tensors"), "'tensors'"),
    "unknown layer": (lambda i: i["architecture"]["children"][0].update(type="Linear3D"), "Linear3D"),
    "layer field misspelt": (lambda i: i["architecture"]["children"][0].update(in_featurs=6), "Linear"),
    "children missing": (lambda i: i["architecture"].pop("children"), "'children'"),
    "wrong version": (lambda i: i.update(version=2), "version"),
}


@pytest.mark.parametrize("edit", sorted(INDEX_EDITS))
def test_every_index_edit_is_a_value_error_naming_the_field(saved, edit):
    change, field = INDEX_EDITS[edit]
    edit_index(saved, change)
    with pytest.raises(ValueError, match=field) as err:
        load_compressed(saved)
    assert type(err.value) is ValueError  # not a KeyError/IndexError subclass dressed up


ARRAY_EDITS = {
    "scale 0": (lambda a: a.update(scales=np.zeros_like(a["scales"])), "'scales'"),
    "scale NaN": (lambda a: a.update(scales=np.full_like(a["scales"], np.nan)), "'scales'"),
    "scale negative": (lambda a: a.update(scales=-a["scales"]), "'scales'"),
    "scales array missing": (lambda a: a.pop("scales"), "'scales'"),
    "values relabelled float32": (lambda a: a.update(values=a["values"].astype(np.float32)), "'encoding'"),
    "values int16": (lambda a: a.update(values=a["values"].astype(np.int16)), "'values'"),
    "gaps int64": (lambda a: a.update(gaps=a["gaps"].astype(np.int64)), "'gaps'"),
    "gaps shorter": (lambda a: a.update(gaps=a["gaps"][:-1]), "'gaps'"),
    "dense 2-D": (lambda a: a.update(dense=a["dense"][None]), "'dense'"),
}


@pytest.mark.parametrize("edit", sorted(ARRAY_EDITS))
def test_every_array_edit_is_a_value_error_naming_the_field(saved, edit):
    change, field = ARRAY_EDITS[edit]
    edit_arrays(saved, change)
    with pytest.raises(ValueError, match=field):
        load_compressed(saved)


@pytest.mark.parametrize("damage", ["not a zip", "truncated", "empty", "pickled"])
def test_a_corrupt_npz_is_a_value_error(saved, damage):
    npz = saved.with_suffix(".npz")
    data = npz.read_bytes()
    if damage == "pickled":
        np.savez(npz, values=np.array([{"x": 1}], dtype=object))
    else:
        npz.write_bytes({"not a zip": b"hello", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        load_compressed(saved)


def test_a_tiny_npz_claiming_a_huge_array_is_refused_before_allocating(saved):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|i1", "fortran_order": False, "shape": (40 << 30,)})
    with zipfile.ZipFile(saved.with_suffix(".npz"), "w") as z:
        z.writestr("values.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(ValueError, match=r"claims shape \(42949672960,\)"):
        load_compressed(saved)


def test_the_unedited_file_still_loads(saved):
    model = load_compressed(saved)
    assert isinstance(model, tc.Sequential)
