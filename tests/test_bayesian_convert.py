"""bayesian.convert / structure / strip and shrink; save / load state.

The Bayesian Compression layers' math is tested in test_bayes_bc.py; MirroredStrategy runs of the
methods with noise and mid-training resume (VCP) in test_bayes_training.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import synthetic_images
from layer_harness import assert_keras_roundtrip

from tfcompress import bayesian
from tfcompress.callbacks import KLAnnealing
from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.runtime import agreement
from tfcompress.layers.dirichlet import DirichletSwitch
from tfcompress.layers.variational_bn import VariationalBatchNormalization
from tfcompress.surgery import shrink


def cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(12, 3, activation="relu", name="c2"),
        keras.layers.Flatten(),
        keras.layers.Dense(20, activation="relu", name="fc"),
        keras.layers.Dense(10, name="out"),
    ])


@pytest.fixture(scope="module")
def trained():
    x, y = synthetic_images(320, shape=(16, 16, 1), seed=1)
    model = cnn()
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, verbose=0)
    return model, x, y


@pytest.mark.parametrize("method, tolerance", [("vcp", 1e-4), ("slimming", 1e-5), ("dirichlet", 1e-5),
                                               ("bc", 1e-5), ("sparse_vd", 2e-2)])
def test_convert_keeps_the_function(trained, method, tolerance):
    model, x, _ = trained
    converted = bayesian.convert(model, method, dataset_size=len(x))
    assert any(getattr(layer, "tfcompress_bayesian", False) or "bn" in layer.name for layer in converted.layers)
    # sparse VD drops, at conversion, weights whose initial log alpha is already above 3
    np.testing.assert_allclose(converted.predict(x[:16], verbose=0), model.predict(x[:16], verbose=0),
                               atol=tolerance)
    assert converted.get_layer("out").__class__ is keras.layers.Dense  # the output layer stays plain


def prune_some(model, method):
    """Force a known structure: drop half of c1's and c2's channels and 15 of fc's units."""
    drops = {"c1": [0, 2, 4, 6], "c2": [1, 3, 5, 7, 9, 11], "fc": list(range(15))}
    for layer in model.layers:
        for name, channels in drops.items():
            if layer.name in (f"{name}_bn", f"{name}_switch", f"{name}_sbp", name) and hasattr(layer, "mask"):
                mask = np.ones(layer.mask.shape[0], "float32")
                mask[channels] = 0
                layer.mask.assign(mask)
    return {"c1": 4, "c2": 6, "fc": 5}


@pytest.mark.parametrize("method", ["vcp", "dirichlet", "sbp", "sparse_vd", "bc"])
def test_structure_strip_shrink_export(trained, method, tmp_path):
    model, x, y = trained
    converted = bayesian.convert(model, method, dataset_size=len(x))
    converted.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    converted.fit(x, y, epochs=1, verbose=0)
    kept = prune_some(converted, method)
    info = bayesian.structure(converted)
    for name, count in kept.items():
        entry = next(v for k, v in info.items() if k.startswith(name))
        assert entry["kept"] <= count and entry["total"] == {"c1": 8, "c2": 12, "fc": 20}[name]
    plain = bayesian.strip(converted)
    assert not any(getattr(layer, "tfcompress_bayesian", False) for layer in plain.layers)
    # Dirichlet froze the weights for training the switches; the stripped model fine-tunes
    assert all(layer.trainable for layer in plain.layers)
    reference = converted.predict(x[:32], verbose=0)
    np.testing.assert_allclose(plain.predict(x[:32], verbose=0), reference, atol=1e-5)
    small, report = shrink(converted, return_report=True)  # shrink strips Bayesian layers itself
    np.testing.assert_allclose(small.predict(x[:32], verbose=0), reference, atol=1e-4)
    assert all(layer.trainable for layer in small.layers) and len(small.trainable_weights) >= 8
    for name, count in kept.items():
        assert report.channels[name][1] <= count
    assert report.macs_after < report.macs_before / 2
    to_tflite(small, tmp_path / "s.tflite", "int8", representative_data=x[:64])
    assert agreement(small, tmp_path / "s.tflite", x[:100]).top1_agreement >= 0.9


def test_slimming_threshold_structure(trained):
    model, x, y = trained
    converted = bayesian.convert(model, "slimming", dataset_size=len(x), slimming_strength=1e-2)
    bn = converted.get_layer("c1_bn")
    weights = bn.get_weights()
    weights[0][:3] = 1e-4
    bn.set_weights(weights)
    info = bayesian.structure(converted, slimming_threshold=1e-3)
    assert info["c1_bn"]["kept"] == 5
    plain = bayesian.strip(converted, slimming_threshold=1e-3)
    assert shrink(plain, return_report=True)[1].channels["c1"] == (8, 5)


def test_sbp_conversion_scales_every_channel_by_the_initial_expected_noise(trained):
    """Documented, not function-preserving: each LogNormalDropout starts with E[theta] =
    2 exp(sigma^2 / 2) Phi(-sigma) ~ 0.9615 (sigma = e^-3), which the converted model applies to
    every channel of c1, c2 and fc. Reference: the plain model with those layers' kernels and
    biases scaled by the closed form (the factor commutes with ReLU)."""
    from scipy import stats

    model, x, _ = trained
    converted = bayesian.convert(model, "sbp", dataset_size=len(x))
    factor = 2.0 * np.exp(np.exp(-3.0) ** 2 / 2.0) * stats.norm.cdf(-np.exp(-3.0))
    for name in ("c1", "c2", "fc"):
        np.testing.assert_allclose(converted.get_layer(f"{name}_sbp").expected_noise(), factor, rtol=1e-6)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    for name in ("c1", "c2", "fc"):
        layer = reference.get_layer(name)
        layer.set_weights([w * factor for w in layer.get_weights()])
    expected = reference.predict(x[:32], verbose=0)
    got = converted.predict(x[:32], verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(got - model.predict(x[:32], verbose=0)).max() > 1e-2


def test_bad_method():
    with pytest.raises(TfcompressError, match="unknown method"):
        bayesian.convert(cnn(), "magic", dataset_size=10)


def test_save_load_and_resume_keep_masks_and_kl_weight(trained, tmp_path):
    model, x, y = trained
    converted = bayesian.convert(model, "vcp", dataset_size=len(x))
    converted.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    annealing = KLAnnealing(warmup_epochs=4)
    converted.fit(x, y, epochs=2, verbose=0, callbacks=[annealing])
    prune_some(converted, "vcp")
    again = assert_keras_roundtrip(converted, x[:16], tmp_path, atol=1e-6, name="mid")
    for layer in converted.layers:
        if isinstance(layer, VariationalBatchNormalization):
            other = again.get_layer(layer.name)
            np.testing.assert_array_equal(other.mask.numpy(), layer.mask.numpy())
            assert float(other.kl_weight.numpy()) == pytest.approx(float(layer.kl_weight.numpy()))
    again.fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[KLAnnealing(warmup_epochs=4)])
    assert all(np.array_equal(again.get_layer(n).mask.numpy(), converted.get_layer(n).mask.numpy())
               for n in ("c1_bn", "c2_bn", "fc_bn"))  # masks are never restored


def test_dirichlet_switch_is_registered_for_shrink():
    assert DirichletSwitch.tfcompress_bayesian is True
