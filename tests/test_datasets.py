"""tfcompress.datasets: Fashion-MNIST from local IDX files, scikit-learn digits."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from tfcompress import datasets
from tfcompress.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    DatasetDependencyError,
    DatasetFormatError,
    DatasetNotFoundError,
    digits,
    fashion_mnist,
    read_idx,
)
from tfcompress.errors import TfcompressError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX, written independently of the reader: magic, dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_fashion_mnist(directory: Path, n_train: int = 12, n_test: int = 5, fill: int = 0) -> dict:
    """Tiny IDX gz files; pixel values start at ``fill`` so two directories differ."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(fill)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    arrays["train_images"][0, 0, 0] = fill
    for key, name in FASHION_MNIST_FILES.items():
        (directory / name).write_bytes(gzip.compress(idx_bytes(arrays[key])))
    return arrays


@pytest.fixture
def no_default_places(monkeypatch, tmp_path):
    """Point the Debian and Keras-cache places at empty directories; unset TFCOMPRESS_DATA."""
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian-empty")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TFCOMPRESS_DATA", raising=False)
    return tmp_path


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("TFCOMPRESS_DATA", raising=False)
    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert len(FASHION_MNIST_CLASSES) == 10
    # Pixels are multiples of 1/255.
    sample = x_test[:50] * 255.0
    np.testing.assert_allclose(sample, np.round(sample), atol=1e-4)
    # Cached: a second call returns the same (read-only) arrays without reparsing.
    again = fashion_mnist()
    assert again[0][0] is x_train
    assert not x_train.flags.writeable


def test_load_from_argument_and_env(tmp_path, monkeypatch, no_default_places):
    arrays = write_fake_fashion_mnist(tmp_path / "arg", fill=7)
    (x_train, y_train), (x_test, y_test) = fashion_mnist(tmp_path / "arg")
    assert x_train.shape == (12, 28, 28, 1) and x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(x_train[..., 0], arrays["train_images"].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(y_test, arrays["test_labels"].astype(np.int64))
    assert y_train.dtype == np.int64 and x_train.dtype == np.float32

    write_fake_fashion_mnist(tmp_path / "env", n_train=3, fill=9)
    monkeypatch.setenv("TFCOMPRESS_DATA", str(tmp_path / "env"))
    (x_env, _), _ = fashion_mnist()
    assert x_env.shape[0] == 3 and x_env[0, 0, 0, 0] == pytest.approx(9 / 255)


def test_precedence_argument_env_debian_keras_cache(tmp_path, monkeypatch, no_default_places):
    for name, n in (("arg", 1), ("env", 2), ("debian-empty", 3), ("home/.keras/datasets/fashion-mnist", 4)):
        write_fake_fashion_mnist(tmp_path / name, n_train=n, fill=n)
    monkeypatch.setenv("TFCOMPRESS_DATA", str(tmp_path / "env"))

    def n_train(path=None) -> int:
        return fashion_mnist(path)[0][0].shape[0]

    assert n_train(tmp_path / "arg") == 1
    assert n_train() == 2
    monkeypatch.delenv("TFCOMPRESS_DATA")
    assert n_train() == 3
    for name in FASHION_MNIST_FILES.values():
        (tmp_path / "debian-empty" / name).unlink()
    assert n_train() == 4
    # An incomplete place is skipped: the argument lacks one file, so the next place wins.
    (tmp_path / "arg" / FASHION_MNIST_FILES["test_labels"]).unlink()
    assert n_train(tmp_path / "arg") == 4


def test_missing_data_error_lists_every_place(tmp_path, no_default_places):
    with pytest.raises(DatasetNotFoundError) as info:
        fashion_mnist(tmp_path / "nowhere")
    message = str(info.value)
    assert isinstance(info.value, TfcompressError)
    for place in (
        str(tmp_path / "nowhere"),
        "$TFCOMPRESS_DATA (not set)",
        str(tmp_path / "debian-empty"),
        str(tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist"),
    ):
        assert place in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "TFCOMPRESS_DATA=" in message
    assert "train-images-idx3-ubyte.gz" in message


def test_corrupted_and_truncated_files_name_the_file(tmp_path):
    directory = tmp_path / "bad"
    write_fake_fashion_mnist(directory)
    images = directory / FASHION_MNIST_FILES["train_images"]

    # Truncated gzip stream.
    images.write_bytes(images.read_bytes()[:200])
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz.*truncated or corrupted"):
        fashion_mnist(directory)

    # Valid gzip, truncated IDX payload.
    raw = idx_bytes(np.zeros((12, 28, 28), dtype=np.uint8))[:-10]
    images.write_bytes(gzip.compress(raw))
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz.*needs 9408"):
        fashion_mnist(directory)

    # Not IDX at all.
    images.write_bytes(gzip.compress(b"<html>not found</html>"))
    with pytest.raises(DatasetFormatError, match="bad magic number"):
        fashion_mnist(directory)

    # Labels that do not match the images.
    write_fake_fashion_mnist(directory)
    labels = directory / FASHION_MNIST_FILES["test_labels"]
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(4, dtype=np.uint8))))
    with pytest.raises(DatasetFormatError, match="t10k-labels-idx1-ubyte.gz"):
        fashion_mnist(directory)


def test_read_idx_roundtrip_other_dtypes(tmp_path):
    values = np.arange(-6, 6, dtype=">i2").reshape(3, 4)
    header = bytes([0, 0, 0x0B, 2]) + struct.pack(">II", 3, 4)
    path = tmp_path / "x.idx"
    path.write_bytes(header + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), values.astype(np.int16))


def test_digits_shapes_determinism_and_stratification():
    (x_train, y_train), (x_test, y_test) = digits()
    assert x_train.shape[1:] == (8, 8, 1) and x_train.dtype == np.float32
    assert len(x_train) + len(x_test) == 1797
    assert len(x_test) == int(np.ceil(0.25 * 1797))
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert y_train.dtype == np.int64
    # Stratified: each class's share of the test split matches its share overall.
    y_all = np.concatenate([y_train, y_test])
    share_all = np.bincount(y_all) / len(y_all)
    share_test = np.bincount(y_test, minlength=10) / len(y_test)
    assert np.abs(share_all - share_test).max() < 0.01
    # Deterministic for a seed, different for another.
    (x_again, y_again), _ = digits()
    np.testing.assert_array_equal(x_again, x_train)
    np.testing.assert_array_equal(y_again, y_train)
    (_, y_other), _ = digits(seed=1)
    assert not np.array_equal(y_other, y_train)
    # Values are the original 0..16 intensities / 16.
    np.testing.assert_allclose(x_train * 16, np.round(x_train * 16), atol=1e-6)


def test_digits_bad_fraction_and_missing_sklearn(monkeypatch):
    with pytest.raises(TfcompressError, match="test_fraction"):
        digits(test_fraction=1.5)
    # A module set to None in sys.modules makes its import raise ImportError.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DatasetDependencyError, match=r"pip install tfcompress\[digits\]"):
        digits()


def test_read_idx_of_a_missing_file_says_not_found_not_truncated(tmp_path):
    for name in ("absent-idx1-ubyte", "absent-idx1-ubyte.gz"):
        with pytest.raises(DatasetFormatError, match="file not found") as info:
            read_idx(tmp_path / name)
        assert "truncated" not in str(info.value) and name in str(info.value)
