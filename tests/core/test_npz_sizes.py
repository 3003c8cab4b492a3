"""A .npz whose .npy header claims more data than the file holds is refused before anything is
allocated. The loads run in a child process whose address space is capped at 1 GiB, so an
attempt to allocate what the header claims is a MemoryError there, not a quiet success."""

import io
import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from tinytorch.core.serialization import CheckpointError, _npz_headers, load_checkpoint, save_checkpoint


def forged_npz(path, shape, dtype="<f8", payload=b"\0" * 64, compress=zipfile.ZIP_STORED):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        z.writestr("w.npy", header.getvalue() + payload)


def load_capped(path) -> str:
    """What loading `path` raises in a process limited to 1 GiB of address space."""
    code = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from tinytorch.core.serialization import load_checkpoint
        try:
            load_checkpoint(sys.argv[1])
        except BaseException as e:
            print(type(e).__name__, e)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_tiny_file_claiming_tens_of_gib_is_refused_without_allocating(tmp_path, compress):
    save_checkpoint(tmp_path / "m", {"w": np.zeros(8)})
    index = json.loads((tmp_path / "m.json").read_text())
    index["arrays"]["w"]["shape"] = [40_000, 100_000]  # the index agrees with the forged header
    index.pop("sha256", None)                                 # as a checkpoint written before checksums
    (tmp_path / "m.json").write_text(json.dumps(index))
    forged_npz(tmp_path / "m.npz", (40_000, 100_000), compress=compress)  # 32 GB claimed
    assert (tmp_path / "m.npz").stat().st_size < 1000
    out = load_capped(tmp_path / "m")
    assert out.startswith("CheckpointError") and "claims shape (40000, 100000)" in out, out


def test_a_header_that_disagrees_with_the_index_is_refused_before_reading(tmp_path):
    save_checkpoint(tmp_path / "m", {"w": np.zeros(8)})
    forged_npz(tmp_path / "m.npz", (8,), payload=b"\0" * 64)  # well-formed, same shape
    _npz_headers(tmp_path / "m.npz")
    forged_npz(tmp_path / "m.npz", (9,), payload=b"\0" * 72)
    with pytest.raises(CheckpointError, match=r"'w'.*float64\[9\].*float64\[8\]"):
        load_checkpoint(tmp_path / "m")


def test_a_member_claiming_an_impossible_compression_ratio_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    forged_npz(path, (8,))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    # rewrite the central directory's uncompressed size to 10 GB
    central = data.rindex(b"PK\x01\x02")
    data[central + 24: central + 28] = (10 ** 9).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="claims"):
        _npz_headers(path)
    assert info.file_size == 128 + 64
