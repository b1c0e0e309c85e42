"""Dense layers exported as 1x1 CONV_2D: TFLite Micro equals LiteRT's reference kernels."""

from __future__ import annotations

import keras
import numpy as np

from tfcompress.export import load_tflite, to_micro, to_tflite
from tfcompress.export.dense_as_conv import dense_as_conv


def test_dense_as_conv_makes_tflm_and_litert_reference_agree(tmp_path):
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(32), keras.layers.Dense(10)])
    converted, count = dense_as_conv(model)
    assert count == 3
    np.testing.assert_allclose(converted.predict(x[:50], verbose=0), model.predict(x[:50], verbose=0), atol=1e-5)

    to_tflite(model, tmp_path / "fc.tflite", "int8", x[:300])
    report = to_tflite(model, tmp_path / "conv.tflite", "int8", x[:300], dense_as_conv=True)
    assert "FULLY_CONNECTED" not in report.ops and report.ops["CONV_2D"] == 3
    assert report.int8_coverage == 1.0
    assert any("dense_as_conv" in note for note in report.notes)
    plain = to_micro(tmp_path / "fc.tflite", tmp_path / "m1", samples=x[:600])
    conv = to_micro(tmp_path / "conv.tflite", tmp_path / "m2", samples=x[:600])
    # FULLY_CONNECTED rounds once in LiteRT-ref and twice in TFLM (1 LSB apart near halves);
    # if this ever passes, the runtimes have been aligned and dense_as_conv can go
    assert not plain.identical and plain.max_diff_reference == 1
    assert conv.identical, conv.op_differences[:3]
    # the same weights; only the reshapes' shape constants are added
    added = load_tflite(tmp_path / "conv.tflite").weight_stats()["weight_elements"] - \
        load_tflite(tmp_path / "fc.tflite").weight_stats()["weight_elements"]
    assert 0 <= added <= 3 * 2 * 16


def test_members_with_the_same_layer_names_are_inlined_and_rewritten():
    from tfcompress.core import rebuild, trace
    from tfcompress.uncertainty import ensemble

    def member(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu", name="fc1"),
                                 keras.layers.Dense(3, name="logits")], name=f"m{seed}")

    model = ensemble([member(0), member(1), member(2)]).model
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    want = model.predict(x, verbose=0)
    flat = rebuild(trace(model))          # three "fc1" layers: copies get unique names
    conv, count = dense_as_conv(model)
    assert count == 6
    for other in (flat, conv):
        got = other.predict(x, verbose=0)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-6)
