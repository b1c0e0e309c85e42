"""strip_tensor_names: the same computation in fewer bytes, names kept on the inputs and outputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfcompress.errors import InvalidModelFileError
from tfcompress.export import load_tflite, strip_tensor_names, to_micro, to_tflite
from tfcompress.export.runtime import ModelRunner


def _outputs(path, x):
    runner = ModelRunner(path, reference_kernels=True)
    return np.concatenate([runner.invoke_raw([runner.quantize_input(row[None])])[0] for row in x])


def test_stripped_file_computes_the_same_and_is_smaller(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    named = tmp_path / "named.tflite"
    to_tflite(model, named, "int8", x)
    stripped = strip_tensor_names(named, tmp_path / "stripped.tflite")
    before = load_tflite(named)
    name_bytes = sum(len(t.name) for t in before.tensors[0])
    assert before.size_bytes - stripped.size_bytes >= name_bytes // 2
    assert stripped.op_counts() == before.op_counts() and stripped.weight_stats() == before.weight_stats()
    kept = {t.name for t in (*stripped.inputs, *stripped.outputs)}
    assert kept == {t.name for t in (*before.inputs, *before.outputs)}
    assert all(t.name == "" for t in stripped.tensors[0] if t.name not in kept)
    np.testing.assert_array_equal(_outputs(stripped.path, x), _outputs(named, x))
    assert to_micro(stripped.path, tmp_path / "micro", samples=x[:4]).identical
    # in place works (the rewrite is atomic)
    again = strip_tensor_names(named, named)
    assert again.size_bytes == stripped.size_bytes


def test_strip_refuses_a_file_that_is_not_tflite(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(InvalidModelFileError):
        strip_tensor_names(bad, tmp_path / "out.tflite")
    assert not (tmp_path / "out.tflite").exists()


def test_compact_file_computes_the_same_in_fewer_bytes(tmp_path):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(4, 1)(inputs)
    h = keras.layers.Flatten()(keras.layers.Add()([a, b]))
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    x = np.random.default_rng(1).normal(size=(16, 6, 6, 2)).astype("float32")
    full = tmp_path / "full.tflite"
    to_tflite(model, full, "int8", x)
    from tfcompress.export import compact_tflite

    compact = compact_tflite(full, tmp_path / "compact.tflite")
    named = strip_tensor_names(full, tmp_path / "named_only.tflite")
    before = load_tflite(full)
    assert compact.size_bytes < named.size_bytes < before.size_bytes
    assert compact.op_counts() == before.op_counts() and compact.weight_stats() == before.weight_stats()
    # every constant tensor keeps its bytes; every other tensor now reads the empty buffer 0
    constants = lambda m: sorted(bytes(m._buffers[t.buffer]) for t in m.tensors[0] if t.constant)  # noqa: E731
    assert constants(compact) == constants(before)
    assert all(t.buffer == 0 for t in compact.tensors[0] if not t.constant)
    assert [t.shape_signature for t in compact.tensors[0]] == [t.shape_signature for t in before.tensors[0]]
    np.testing.assert_array_equal(_outputs(compact.path, x), _outputs(full, x))
    assert to_micro(compact.path, tmp_path / "micro", samples=x[:4]).identical
