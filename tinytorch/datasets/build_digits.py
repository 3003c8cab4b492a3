"""Build `digits.npz`: the 1,797 UCI 8x8 handwritten digits with a fixed split.

Run it with

    python -m tinytorch.datasets.build_digits            # rewrites tinytorch/datasets/digits.npz
    python -m tinytorch.datasets.build_digits --out DIR  # writes DIR/digits.npz instead

The images come from `sklearn.datasets.load_digits()` (the test partition,
`optdigits.tes`, of the UCI "Optical Recognition of Handwritten Digits" data set).
scikit-learn is needed only here, never at run time.

The train/test split is stratified by class and seeded, and it is stored in the
file, so loading never depends on a random number generator:

- each class c gets `n_c * N_TEST / 1797` test images, rounded by largest remainder
  (ties go to the smaller digit) so the quotas add up to exactly N_TEST;
- which images of class c go to test is decided by
  `np.random.RandomState(SEED).permutation`, called once per class in class order.
  The legacy `RandomState` stream is frozen by NumPy's compatibility policy.

The output is byte-for-byte deterministic: arrays are written with explicit
little-endian dtypes into an uncompressed zip whose entries carry a fixed timestamp
(`np.savez` stamps the current time, and deflate output depends on the zlib build).
"""

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

SEED = 0
N_TEST = 360
N_CLASSES = 10
OUT_NAME = "digits.npz"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can carry


def load_source():
    """Return (images uint8 (1797, 8, 8), labels uint8 (1797,)) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit(
            "build_digits needs scikit-learn (a build-time tool only, not a runtime "
            "dependency of tinytorch): pip install scikit-learn"
        ) from err
    bunch = load_digits()
    images, labels = np.asarray(bunch.images), np.asarray(bunch.target)
    if images.shape != (1797, 8, 8) or labels.shape != (1797,):
        raise ValueError(f"unexpected digits shapes {images.shape}, {labels.shape}")
    if not (np.all(images == np.round(images)) and images.min() >= 0 and images.max() <= 16):
        raise ValueError("expected integer pixel values in 0..16")
    if not np.array_equal(np.unique(labels), np.arange(N_CLASSES)):
        raise ValueError(f"expected labels 0..9, got {np.unique(labels)}")
    return images.astype(np.uint8), labels.astype(np.uint8)


def quota_per_class(labels, n_test=N_TEST):
    """Test images per class: proportional to the class size, summing to n_test."""
    counts = np.bincount(labels, minlength=N_CLASSES)
    exact = counts * n_test / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    leftover = n_test - quotas.sum()
    by_remainder = np.argsort(-(exact - quotas), kind="stable")  # ties: smaller digit first
    quotas[by_remainder[:leftover]] += 1
    return quotas


def stratified_split(labels, n_test=N_TEST, seed=SEED):
    """Return (train_index, test_index), both sorted, disjoint, covering every sample."""
    rng = np.random.RandomState(seed)
    test = []
    for digit, quota in enumerate(quota_per_class(labels, n_test)):
        members = np.flatnonzero(labels == digit)
        test.append(rng.permutation(members)[:quota])
    test_index = np.sort(np.concatenate(test))
    train_index = np.setdiff1d(np.arange(len(labels)), test_index)  # sorted
    return train_index, test_index


def write_npz(path, arrays):
    """Write `arrays` as an .npz that np.load reads, with the same bytes every time."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_DATE)
            info.create_system = 3  # "unix", whatever the building platform
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


def build(out_dir):
    """Build digits.npz into out_dir; return its path and the per-class counts."""
    images, labels = load_source()
    train_index, test_index = stratified_split(labels)
    arrays = {
        "x_train": images[train_index],
        "y_train": labels[train_index],
        "x_test": images[test_index],
        "y_test": labels[test_index],
        # positions in sklearn's load_digits() order, for provenance
        "train_index": train_index.astype("<u2"),
        "test_index": test_index.astype("<u2"),
    }
    path = Path(out_dir) / OUT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, arrays)
    return path, {
        "train": np.bincount(labels[train_index], minlength=N_CLASSES),
        "test": np.bincount(labels[test_index], minlength=N_CLASSES),
        "all": np.bincount(labels, minlength=N_CLASSES),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent),
                        help="directory to write digits.npz into (default: the package)")
    args = parser.parse_args(argv)
    path, counts = build(args.out)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print("counts for README.md:\n")
    print("| split | total | " + " | ".join(str(d) for d in range(N_CLASSES)) + " |")
    print("|---" * (N_CLASSES + 2) + "|")
    for split, per_class in counts.items():
        cells = " | ".join(str(n) for n in per_class)
        print(f"| {split} | {per_class.sum():,} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
