"""CompressionSummaries: the per-layer scalars and histograms, read back from the event files."""

from __future__ import annotations

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress
from tfcompress import bayesian
from tfcompress.callbacks import CompressionSummaries, KLAnnealing, UpdatePruning
from tfcompress.errors import TfcompressError
from tfcompress.pruning import ConstantSparsity


def read_events(log_dir):
    scalars, histograms = {}, {}
    for path in glob.glob(f"{log_dir}/compression/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "histograms":
                    histograms.setdefault(value.tag, []).append((event.step, tensor))
                else:
                    scalars.setdefault(value.tag, []).append((event.step, float(tensor)))
    return scalars, histograms


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64)


def model(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,))
    h = keras.layers.Dense(10, activation="relu", name="fc1")(x)
    return keras.Model(x, keras.layers.Dense(3, name="out")(h))


def test_pruning_scalars_per_layer_and_epoch(tmp_path):
    pruned = tfcompress.prune(model(), ConstantSparsity(0.6, 0), granularity="channel")
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0,
               callbacks=[UpdatePruning(), CompressionSummaries(tmp_path)])
    scalars, _ = read_events(tmp_path)
    assert [step for step, _ in scalars["fc1/sparsity"]] == [4, 8]
    assert scalars["fc1/sparsity"][-1][1] == pytest.approx(0.6)
    assert scalars["fc1/kept_channels"][-1][1] == 4
    assert scalars["fc1/removable_channels"][-1][1] == 6
    assert scalars["fc1/pruning_step"][-1][1] == 8


def test_bayesian_kl_weights_importances_and_qat_ranges(tmp_path):
    x, y = data()
    bayes = bayesian.convert(model(), "dirichlet", dataset_size=len(x))
    bayes.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    summaries = CompressionSummaries(tmp_path / "bayes", update_freq=2)
    bayes.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[KLAnnealing(warmup_epochs=2), summaries])
    scalars, histograms = read_events(tmp_path / "bayes")
    switch = bayes.get_layer("fc1_switch")
    assert [step for step, _ in scalars["fc1_switch/kl"]] == [2, 4, 4]  # every 2 batches, and the epoch end
    np.testing.assert_allclose(scalars["fc1_switch/kl"][-1][1], float(switch.kl_divergence()), rtol=1e-5)
    assert scalars["fc1_switch/kl_weight"][-1][1] == pytest.approx(float(switch.kl_weight.numpy()))
    importance = histograms["fc1_switch/importance"][-1][1]
    assert importance.shape[-1] == 3 and importance[:, 2].sum() == 10  # (left, right, count) buckets
    qat = tfcompress.quantize(model())
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[CompressionSummaries(tmp_path / "qat")])
    scalars, _ = read_events(tmp_path / "qat")
    quantizer = qat.get_layer("quant_fc1").output_quantizer
    assert scalars["quant_fc1/range_max"][-1][1] == pytest.approx(float(quantizer.range_max.numpy()))


def test_bad_update_freq():
    with pytest.raises(TfcompressError, match="update_freq"):
        CompressionSummaries("/tmp/x", update_freq=0)
