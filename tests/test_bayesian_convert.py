"""bayesian.convert / structure / strip and shrink; Bayesian Compression layers' math; state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow_probability as tfp
from conftest import synthetic_images

from tfcompress import bayesian
from tfcompress.callbacks import KLAnnealing
from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.runtime import agreement
from tfcompress.layers.bayesian_compression import BCConv2D, BCDense
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
    reference = converted.predict(x[:32], verbose=0)
    np.testing.assert_allclose(plain.predict(x[:32], verbose=0), reference, atol=1e-5)
    small, report = shrink(converted, return_report=True)  # shrink strips Bayesian layers itself
    np.testing.assert_allclose(small.predict(x[:32], verbose=0), reference, atol=1e-4)
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


def test_bc_weight_kl_matches_tfp_and_extremes_are_finite():
    layer = BCDense(4, dataset_size=100)
    layer.build((None, 3))
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 4)).astype("float32")
    log_s2 = rng.uniform(-12, 2, size=(3, 4)).astype("float32")
    layer.kernel.assign(mu)
    layer.kernel_log_sigma2.assign(log_s2)
    expected = tfp.distributions.kl_divergence(tfp.distributions.Normal(mu, np.exp(0.5 * log_s2)),
                                               tfp.distributions.Normal(0.0, 1.0)).numpy().sum()
    z_part = float(np.sum(keras.ops.convert_to_numpy(
        __import__("tfcompress.layers.sparse_vd", fromlist=["approximate_kl"]).approximate_kl(layer.z_log_alpha()))))
    assert float(layer.kl_divergence()) - z_part == pytest.approx(expected, rel=1e-4)
    for z_mu, z_s2 in ((1e-9, -30.0), (1e3, 10.0), (0.0, -100.0)):
        layer.z_mu.assign(np.full(4, z_mu, "float32"))
        layer.z_log_sigma2.assign(np.full(4, z_s2, "float32"))
        assert np.isfinite(float(layer.kl_divergence()))


def test_bc_bit_precision_against_numpy():
    layer = BCConv2D(3, 2, dataset_size=10)
    layer.build((None, 5, 5, 2))
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.normal(size=(2, 2, 2, 3)).astype("float32"))
    layer.kernel_log_sigma2.assign(np.full((2, 2, 2, 3), -8.0, "float32"))
    layer.z_mu.assign(np.array([1.0, 0.5, 1e-3], "float32"))
    layer.z_log_sigma2.assign(np.array([-6.0, -6.0, -6.0], "float32"))
    keep = layer.keep_mask()
    assert keep.tolist() == [True, True, False]  # log alpha of z_3 = -6 - log(1e-6) > 3
    mz, vz = np.array([1.0, 0.5]), np.exp(-6.0)
    mw, vw = layer.kernel.numpy()[..., :2], np.exp(-8.0)
    marginal = (mz**2 + vz) * (mw**2 + vw) - mz**2 * mw**2
    expected = 1 + int(np.ceil(np.log2(np.abs(mz * mw).max() / np.sqrt(marginal.min()))))
    assert layer.bit_precision() == expected


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
    converted.save(tmp_path / "mid.keras")
    again = keras.saving.load_model(tmp_path / "mid.keras")
    for layer in converted.layers:
        if isinstance(layer, VariationalBatchNormalization):
            other = again.get_layer(layer.name)
            np.testing.assert_array_equal(other.mask.numpy(), layer.mask.numpy())
            assert float(other.kl_weight.numpy()) == pytest.approx(float(layer.kl_weight.numpy()))
    np.testing.assert_allclose(again.predict(x[:16], verbose=0), converted.predict(x[:16], verbose=0), atol=1e-6)
    again.fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[KLAnnealing(warmup_epochs=4)])
    assert all(np.array_equal(again.get_layer(n).mask.numpy(), converted.get_layer(n).mask.numpy())
               for n in ("c1_bn", "c2_bn", "fc_bn"))  # masks are never restored


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    sys.path.insert(0, sys.argv[1])
    from conftest import synthetic_images
    from tfcompress import bayesian
    from test_bayesian_convert import cnn
    x, y = synthetic_images(256, shape=(16, 16, 1), seed=1)

    def run(strategy):
        with strategy.scope():
            model = cnn()
            converted = bayesian.convert(model, "dirichlet", dataset_size=len(x), estimator="mean",
                                         prior_concentration=0.5)
            converted.compile(keras.optimizers.Adam(5e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        converted.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return {k: v["keep_mask"] for k, v in bayesian.structure(converted).items()}, converted

    single, a = run(tf.distribute.get_strategy())
    mirrored, b = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({"same": single == mirrored, "layers": len(single),
                      "diff": max(float(np.abs(u - v).max()) for u, v in zip(a.get_weights(), b.get_weights()))}))
""")


def test_mirrored_strategy_gives_the_single_device_structure():
    here = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-c", MIRRORED, here], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=here, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"] and result["layers"] == 3
    assert result["diff"] < 1e-3


def test_dirichlet_switch_is_registered_for_shrink():
    assert DirichletSwitch.tfcompress_bayesian is True
