"""Atomic writes honour the umask (a temporary file is 0600 until renamed) and keep an existing
file's mode (issue 20)."""

from __future__ import annotations

import os
import stat

from tfcompress._io import write_bytes_atomic, write_text_atomic


def test_new_files_get_the_umask_and_existing_files_keep_their_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "model.tflite", b"abc")
        assert stat.S_IMODE((tmp_path / "model.tflite").stat().st_mode) == 0o640
        os.umask(0o002)
        write_text_atomic(tmp_path / "report.json", "{}")
        assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o664
        os.chmod(tmp_path / "model.tflite", 0o600)
        write_bytes_atomic(tmp_path / "model.tflite", b"new")
        assert stat.S_IMODE((tmp_path / "model.tflite").stat().st_mode) == 0o600
        assert (tmp_path / "model.tflite").read_bytes() == b"new"
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    finally:
        os.umask(previous)


def test_bad_output_paths_and_calibration_counts_fail_before_converting(tmp_path):
    import keras
    import numpy as np
    import pytest

    from tfcompress.errors import TfcompressError
    from tfcompress.export import to_tflite

    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2)(x))
    data = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    (tmp_path / "adir").mkdir()
    with pytest.raises(TfcompressError, match="is a directory"):
        to_tflite(model, tmp_path / "adir", "int8", representative_data=data)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(TfcompressError, match="calibration_samples must be a positive integer"):
            to_tflite(model, tmp_path / "m.tflite", "int8", representative_data=data, calibration_samples=bad)
    assert not (tmp_path / "m.tflite").exists()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(TfcompressError, match="not writable"):
            to_tflite(model, locked / "m.tflite", "int8", representative_data=data)


def test_a_pipeline_failing_mid_way_is_a_calibration_error(tmp_path):
    import keras
    import numpy as np
    import pytest
    import tensorflow as tf

    from tfcompress.errors import CalibrationDataError
    from tfcompress.export import to_tflite

    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2)(x))

    def failing():
        for i in range(10):
            if i == 3:
                raise RuntimeError("disk went away")
            yield np.ones((1, 4), "float32")

    with pytest.raises(CalibrationDataError, match="failed after 3 sample.*disk went away"):
        to_tflite(model, tmp_path / "m.tflite", "int8", representative_data=failing)
    def check(t):
        with tf.control_dependencies([tf.debugging.assert_less(t, 0.0)]):
            return tf.identity(t)

    broken = tf.data.Dataset.from_tensor_slices(np.ones((8, 4), "float32")).map(check)
    with pytest.raises(CalibrationDataError, match="failed after 0 sample"):
        to_tflite(model, tmp_path / "m.tflite", "int8", representative_data=broken)
    assert not (tmp_path / "m.tflite").exists()


def test_a_lambda_layer_prunes_quantizes_and_exports_and_its_file_names_the_fix(tmp_path):
    """A Lambda is reused as it is (never rebuilt from its config, which Keras' safe mode refuses):
    prune, fit, strip, quantize and the int8 export run through it; loading a saved file that
    holds one is a TfcompressError naming safe_mode=False, before any conversion."""
    import keras
    import numpy as np
    import pytest

    import tfcompress
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.errors import TfcompressError
    from tfcompress.export import load_keras_model, to_tflite
    from tfcompress.pruning import ConstantSparsity, pruning_wrappers

    keras.utils.set_random_seed(0)
    x = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu", name="fc1")(x)
    h = keras.layers.Lambda(lambda t: t * 0.5, name="halve")(h)
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h))
    rng = np.random.default_rng(0)
    data, target = rng.normal(size=(32, 8)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")

    pruned = tfcompress.prune(model, ConstantSparsity(0.5, 0))
    pruned.compile("adam", "mse")
    pruned.fit(data, target, batch_size=8, verbose=0, callbacks=[UpdatePruning()])
    assert [float(w.mask.numpy().mean()) for w in pruning_wrappers(pruned)] == [0.5, 0.5]
    plain = tfcompress.strip(pruned)
    np.testing.assert_allclose(plain.predict(data, verbose=0), pruned.predict(data, verbose=0), atol=1e-6)
    qat = tfcompress.quantize(plain)
    qat.compile("adam", "mse")
    qat.fit(data, target, batch_size=8, verbose=0)
    report = to_tflite(qat, tmp_path / "lambda_int8.tflite", quantization="int8")
    assert report.int8_coverage == 1.0 and not report.float_ops

    pruned.save(tmp_path / "pruned.keras")
    with pytest.raises(TfcompressError, match="safe_mode=False") as info:
        load_keras_model(tmp_path / "pruned.keras")
    assert "Lambda" in info.value.what
    again = keras.saving.load_model(tmp_path / "pruned.keras", safe_mode=False)
    np.testing.assert_allclose(again.predict(data, verbose=0), pruned.predict(data, verbose=0), atol=1e-6)
