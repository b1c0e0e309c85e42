"""Small image datasets shaped for Conv2D, read from local files only (never downloaded).

* :func:`fashion_mnist` reads the four IDX gz files of Fashion-MNIST (Xiao, Rasul and
  Vollgraf, 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
  Algorithms", arXiv:1708.07747) from a local directory. The IDX format is parsed here
  (LeCun et al., "THE MNIST DATABASE of handwritten digits", file format section): a
  4-byte magic number ``0x00 0x00 <type code> <number of dimensions>``, one big-endian
  uint32 per dimension, then the values in row-major order.
* :func:`digits` wraps scikit-learn's 8x8 handwritten digits (UCI "Optical Recognition of
  Handwritten Digits", shipped inside scikit-learn), with a fixed stratified split.

Both return ``((x_train, y_train), (x_test, y_test))`` with ``x`` float32 shaped
``(N, H, W, 1)`` in ``[0, 1]`` and ``y`` int64 class indices.
"""

from __future__ import annotations

import gzip
import os
import zlib
from functools import cache
from pathlib import Path

import numpy as np

from tfcompress.errors import TfcompressError

__all__ = [
    "DATA_ENV_VAR",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetDependencyError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "digits",
    "fashion_mnist",
    "fashion_mnist_search_path",
    "read_idx",
]

DATA_ENV_VAR = "TFCOMPRESS_DATA"
# Installed by the Debian package dataset-fashion-mnist.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_SUBDIR = Path(".keras") / "datasets" / "fashion-mnist"

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# IDX type codes (third byte of the magic number) -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetNotFoundError(TfcompressError):
    """No searched place holds the dataset's files.

    Example:
        :func:`fashion_mnist` raises it when no place of :func:`fashion_mnist_search_path` holds
        the four files; it is a `TfcompressError`, so the CLI prints it as one line:

        >>> error = DatasetNotFoundError("Fashion-MNIST not found", "fashion_mnist", "set TFCOMPRESS_DATA")
        >>> str(error)
        'fashion_mnist: Fashion-MNIST not found Fix: set TFCOMPRESS_DATA'
    """


class DatasetFormatError(TfcompressError):
    """A dataset file is truncated, corrupted or not in the expected format.

    Example:
        >>> _ = open("labels-idx1-ubyte", "wb").write(bytes(2))
        >>> read_idx("labels-idx1-ubyte")
        Traceback (most recent call last):
        ...
        tfcompress.datasets.DatasetFormatError: labels-idx1-ubyte: is only 2 bytes, too short for an IDX header...
    """


class DatasetDependencyError(TfcompressError):
    """A dataset needs an optional package that is not installed.

    Example:
        >>> issubclass(DatasetDependencyError, TfcompressError)
        True
    """


def fashion_mnist_search_path(path: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places :func:`fashion_mnist` looks in, in order, as ``(origin, directory)`` pairs.

    Example:
        >>> [origin for origin, _ in fashion_mnist_search_path("data")][:1]
        ['path argument']
        >>> str(fashion_mnist_search_path()[-1][1]).endswith(".keras/datasets/fashion-mnist")
        True
    """
    places: list[tuple[str, Path]] = []
    if path is not None:
        places.append(("path argument", Path(path).expanduser()))
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        places.append((f"${DATA_ENV_VAR}", Path(env).expanduser()))
    places.append(("Debian package dataset-fashion-mnist", DEBIAN_FASHION_MNIST_DIR))
    places.append(("Keras cache", Path.home() / KERAS_CACHE_SUBDIR))
    return places


def _missing_files(directory: Path) -> list[str]:
    return [name for name in FASHION_MNIST_FILES.values() if not (directory / name).is_file()]


def fashion_mnist(
    path: str | os.PathLike | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST from local IDX gz files.

    The first directory holding all four files wins, searched in this order: ``path``,
    ``$TFCOMPRESS_DATA``, ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``), ``~/.keras/datasets/fashion-mnist`` (Keras' own cache).

    Parsed arrays are cached in-process per directory (and the files' size and mtime),
    so later calls cost nothing. The returned arrays are that cache and are therefore
    read-only; take ``np.array(x)`` for a writable copy.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: ``x`` float32 ``(N, 28, 28, 1)`` scaled
        to ``[0, 1]`` (pixel / 255), ``y`` int64 in ``0..9`` (names in
        :data:`FASHION_MNIST_CLASSES`). 60,000 train and 10,000 test images for the real
        dataset.

    Raises:
        DatasetNotFoundError: no searched place holds all four files; the message lists
            every place searched and how to fill one.
        DatasetFormatError: a file is truncated, corrupted, or its shapes do not agree.

    Example:
        Four tiny files in the IDX format stand in for the real download here:

        >>> import gzip, struct
        >>> def write_idx(name, a):
        ...     header = struct.pack(">I", 0x0800 + a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
        ...     with gzip.open(name, "wb") as f:
        ...         _ = f.write(header + a.tobytes())
        >>> os.makedirs("fmnist", exist_ok=True)
        >>> for split, n in (("train", 6), ("test", 2)):
        ...     write_idx(f"fmnist/{FASHION_MNIST_FILES[split + '_images']}", np.full((n, 28, 28), 255, np.uint8))
        ...     write_idx(f"fmnist/{FASHION_MNIST_FILES[split + '_labels']}", np.arange(n, dtype=np.uint8))
        >>> (x_train, y_train), (x_test, y_test) = fashion_mnist("fmnist")
        >>> x_train.shape, x_train.dtype, float(x_train.max()), y_test.tolist()
        ((6, 28, 28, 1), dtype('float32'), 1.0, [0, 1])
        >>> FASHION_MNIST_CLASSES[int(y_train[1])]
        'Trouser'
    """
    places = fashion_mnist_search_path(path)
    searched = []
    for origin, directory in places:
        missing = _missing_files(directory)
        if not missing:
            return _load_fashion_mnist_cached(*_cache_key(directory))
        searched.append(f"{directory} ({origin}: missing {len(missing)} of 4 files)")
    if not os.environ.get(DATA_ENV_VAR):
        searched.insert(1 if path is not None else 0, f"${DATA_ENV_VAR} (not set)")
    raise DatasetNotFoundError(
        "Fashion-MNIST not found; searched: " + "; ".join(searched),
        "tfcompress.datasets.fashion_mnist",
        "install it with `apt-get install dataset-fashion-mnist`, or set "
        f"{DATA_ENV_VAR}=/dir/with/files, or copy the files "
        f"{', '.join(FASHION_MNIST_FILES.values())} into ~/{KERAS_CACHE_SUBDIR}, "
        "or pass fashion_mnist(path=...)",
    )


def _cache_key(directory: Path) -> tuple:
    resolved = directory.resolve()
    stamps = []
    for name in FASHION_MNIST_FILES.values():
        stat = (resolved / name).stat()
        stamps.append((stat.st_size, stat.st_mtime_ns))
    return str(resolved), tuple(stamps)


@cache
def _load_fashion_mnist_cached(directory: str, _stamps: tuple) -> tuple:
    base = Path(directory)
    arrays = {key: read_idx(base / name) for key, name in FASHION_MNIST_FILES.items()}
    result = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_file = base / FASHION_MNIST_FILES[f"{split}_images"]
        labels_file = base / FASHION_MNIST_FILES[f"{split}_labels"]
        if images.ndim != 3:
            raise DatasetFormatError(
                f"expected a 3-D image array (N, rows, cols), found shape {images.shape}",
                str(images_file),
                "replace the file with the original Fashion-MNIST download",
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetFormatError(
                f"holds labels of shape {labels.shape} for {images.shape[0]} images",
                str(labels_file),
                "replace the image and label files with a matching pair",
            )
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise DatasetFormatError(
                f"expected unsigned-byte IDX data, found {images.dtype} / {labels.dtype}",
                f"{images_file}, {labels_file}",
                "replace the files with the original Fashion-MNIST download",
            )
        x = (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
        y = labels.astype(np.int64)
        # Read-only: these arrays are the cache shared by every caller.
        x.flags.writeable = False
        y.flags.writeable = False
        result.append((x, y))
    return tuple(result)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed when its name ends in ``.gz``).

    Raises:
        DatasetFormatError: bad magic number, unknown type code, a truncated or
            corrupted gzip stream, or a payload whose size does not match the header.

    Example:
        >>> import struct
        >>> data = struct.pack(">I", 0x0801) + struct.pack(">I", 3) + bytes([7, 8, 9])   # uint8, 1 dimension
        >>> _ = open("labels-idx1-ubyte", "wb").write(data)
        >>> read_idx("labels-idx1-ubyte")
        array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    fix = "delete it and copy the original file again (or reinstall dataset-fashion-mnist)"
    if not path.is_file():
        raise DatasetFormatError("file not found", str(path),
                                 "check the path (apt-get install dataset-fashion-mnist provides the Fashion-MNIST files)")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (an OSError) / EOFError for corrupted or truncated streams.
        raise DatasetFormatError(
            f"cannot be decompressed ({type(exc).__name__}: {exc}); the file is truncated or corrupted",
            str(path),
            fix,
        ) from None
    if len(data) < 4:
        raise DatasetFormatError(f"is only {len(data)} bytes, too short for an IDX header", str(path), fix)
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetFormatError(
            f"is not an IDX file: bad magic number 0x{data[:4].hex()}", str(path), fix
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetFormatError(f"has a truncated IDX header ({ndim} dimensions)", str(path), fix)
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetFormatError(
            f"holds {len(data) - header} data bytes but its header shape {shape} needs {expected} "
            "(truncated or corrupted)",
            str(path),
            fix,
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def digits(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 handwritten digits as images, with a fixed stratified split.

    1,797 images of the UCI "Optical Recognition of Handwritten Digits" set, shipped with
    scikit-learn (nothing is downloaded). Pixel values 0..16 are scaled to ``[0, 1]``.
    The split is stratified by class and deterministic for a given ``seed``.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: ``x`` float32 ``(N, 8, 8, 1)``,
        ``y`` int64 in ``0..9``.

    Raises:
        DatasetDependencyError: scikit-learn is not installed.
        TfcompressError: ``test_fraction`` is not strictly between 0 and 1.

    Example:
        >>> (x_train, y_train), (x_test, y_test) = digits()
        >>> x_train.shape, x_test.shape, y_train.dtype
        ((1347, 8, 8, 1), (450, 8, 8, 1), dtype('int64'))
        >>> float(x_train.min()), float(x_train.max())
        (0.0, 1.0)
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise TfcompressError(
            f"test_fraction must be strictly between 0 and 1, got {test_fraction}",
            "tfcompress.datasets.digits(test_fraction=...)",
            "pass e.g. test_fraction=0.25",
        )
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DatasetDependencyError(
            "the digits dataset needs scikit-learn, which is not installed",
            "tfcompress.datasets.digits",
            "pip install tfcompress[digits]",
        ) from None
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[..., np.newaxis]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=float(test_fraction), random_state=seed, stratify=y
    )
    return (x_train, y_train), (x_test, y_test)
