"""Posteriors compiled into one deterministic int8 graph (tfcompress.uncertainty, issue 21)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy

from tfcompress.core import rebuild, trace
from tfcompress.errors import ConversionError, TfcompressError
from tfcompress.export import load_tflite
from tfcompress.uncertainty import (
    OUTPUT_NAMES,
    FrozenNoise,
    UncertaintyHead,
    decompose,
    ensemble,
    from_stacked,
    mc_dropout,
    run_tflite,
    storage_accounting,
)
from tfcompress.uncertainty.metrics import negative_log_likelihood
from tfcompress.uncertainty.posterior import RANDOM_OPS


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype("float32"), d.target


def _mlp(seed: int, dropout: float = 0.0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,), name="pixels"), keras.layers.Dense(32, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers, name=f"member_{seed}")


@pytest.fixture(scope="module")
def members(digits):
    x, y = digits
    out = []
    for seed in range(3):
        m = _mlp(seed, dropout=0.3)
        m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x[:1200], y[:1200], epochs=4, batch_size=64, verbose=0)
        out.append(m)
    return out


def test_decomposition_matches_scipy_and_the_identity():
    z = np.random.default_rng(0).normal(scale=3.0, size=(7, 5, 4))
    got = decompose(z)
    p = softmax(z, axis=-1)
    mean = p.mean(1)
    np.testing.assert_allclose(got["probs"], mean, atol=1e-12)
    np.testing.assert_allclose(got["total"], entropy(mean, axis=-1), atol=1e-12)
    np.testing.assert_allclose(got["data"], entropy(p, axis=-1).mean(-1), atol=1e-12)
    kl = np.stack([entropy(p[:, s], mean, axis=-1) for s in range(5)], 1).mean(1)
    np.testing.assert_allclose(got["knowledge"], kl, atol=1e-12)
    np.testing.assert_allclose(got["total"] - got["data"], got["knowledge"], atol=1e-10)


def test_the_keras_head_equals_the_numpy_reference():
    z = np.random.default_rng(1).normal(scale=4.0, size=(16, 6, 10)).astype("float32")
    got = {k: np.asarray(v) for k, v in UncertaintyHead()(z).items()}
    ref = decompose(z)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(got[name], ref[name], atol=2e-5, err_msg=name)
    assert np.abs(got["total"] - got["data"] - got["knowledge"]).max() < 1e-5
    one = {k: np.asarray(v) for k, v in UncertaintyHead()(z[:, :1]).items()}
    assert "knowledge" not in one       # one model: no knowledge uncertainty (and no constant tensor)
    np.testing.assert_allclose(one["total"], entropy(softmax(z[:, 0], -1), axis=-1), atol=2e-5)
    np.testing.assert_array_equal(one["total"], one["data"])


def test_an_ensemble_compiles_to_one_int8_graph_with_named_outputs(members, digits, tmp_path):
    x, y = digits
    posterior = ensemble(members)
    report = posterior.to_tflite(tmp_path / "ens.tflite", x[:300], micro=True, micro_samples=x[1200:1216])
    parsed = load_tflite(tmp_path / "ens.tflite")
    assert report.int8_coverage == 1.0 and parsed.int8_coverage() == 1.0
    assert report.subgraphs == 1 and not set(parsed.op_counts()) & RANDOM_OPS
    assert report.outputs == list(OUTPUT_NAMES)
    assert report.macs_ratio == pytest.approx(3.0, rel=0.05)
    assert report.tflm_identical, report.text()

    test = x[1200:]
    tfl = run_tflite(tmp_path / "ens.tflite", test, reference_kernels=True)
    ref = posterior.reference(test)
    assert np.abs(tfl["probs"] - ref["probs"]).max() < 0.03
    nll_float = -ref["log_probs"][np.arange(len(test)), y[1200:]].mean()
    nll_int8 = negative_log_likelihood(tfl["probs"], y[1200:], log_probs=tfl["log_probs"])
    assert abs(nll_int8 - nll_float) < 0.01, (nll_int8, nll_float)
    for name in ("total", "data", "knowledge"):
        assert np.abs(tfl[name] - ref[name]).mean() < 0.03, name
    # knowledge uncertainty ranks the inputs as the float reference does
    assert np.corrcoef(tfl["knowledge"], ref["knowledge"])[0, 1] > 0.8


def test_mc_dropout_equals_the_model_run_with_the_same_masks(members, digits):
    x, _ = digits
    model = members[0]
    posterior = mc_dropout(model, samples=5, seed=3)
    got = posterior.member_logits(x[:40])
    masks = next(layer for layer in posterior.logits_model.layers if isinstance(layer, FrozenNoise))
    scale = np.asarray(masks.scale)
    assert set(np.unique(scale)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((scale == 0).mean() - 0.3) < 0.1

    dense1, dense2 = (layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    w1, b1 = dense1.get_weights()
    w2, b2 = dense2.get_weights()
    hidden = np.maximum(x[:40] @ w1 + b1, 0)
    for s in range(5):
        np.testing.assert_allclose(got[:, s], (hidden * scale[s]) @ w2 + b2, atol=1e-5)
    # same seed, same posterior
    again = mc_dropout(model, samples=5, seed=3).member_logits(x[:40])
    np.testing.assert_array_equal(got, again)


def test_mc_dropout_through_a_skip_connection_and_spatial_dropout():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    b = keras.layers.SpatialDropout2D(0.5, name="spatial")(a)
    b = keras.layers.Conv2D(4, 3, padding="same")(b)
    c = keras.layers.Add()([a, b])          # a (before the dropout) meets b (after it)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(c))
    model = keras.Model(inp, out)
    posterior = mc_dropout(model, samples=3, seed=1)
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    got = posterior.member_logits(x)
    frozen = posterior.logits_model.get_layer("spatial_frozen")
    scale = np.asarray(frozen.scale)        # [S, 1, 1, C]: one draw per channel
    assert scale.shape == (3, 1, 1, 4)
    for s in range(3):
        def with_mask(node, args, kwargs, s=s):
            if node.name == "spatial":
                return args[0] * scale[s]
            return None
        expected = rebuild(trace(model), with_mask).predict(x, verbose=0)
        np.testing.assert_allclose(got[:, s], expected, atol=1e-5)


def test_mc_dropout_stores_the_weights_once(members, digits, tmp_path):
    x, _ = digits
    posterior = mc_dropout(members[0], samples=8)
    report = posterior.to_tflite(tmp_path / "mc.tflite", x[:200])
    one = load_tflite(report.path)
    assert report.int8_coverage == 1.0 and report.subgraphs == 1
    params = members[0].count_params()
    # every weight once, plus 8 masks of 32 units and the head's constants
    assert one.weight_stats()["weight_elements"] <= params + 8 * 32 + 64


def test_refusals_name_the_layer(digits):
    inp = keras.Input((64,))
    h = keras.layers.Dense(8)(inp)
    h = keras.layers.Dropout(0.5, name="mc")(h, training=True)
    stochastic = keras.Model(inp, keras.layers.Dense(10)(h))
    with pytest.raises(ConversionError, match="'mc'.*training=True"):
        ensemble([stochastic, _mlp(1)])
    softmax_head = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(TfcompressError, match="softmax"):
        ensemble([softmax_head, _mlp(2)])
    with pytest.raises(TfcompressError, match="same input shape"):
        ensemble([_mlp(3), keras.Sequential([keras.Input((32,)), keras.layers.Dense(10)])])
    with pytest.raises(TfcompressError, match="no dropout-like layer"):
        mc_dropout(_mlp(4), samples=4)
    with pytest.raises(TfcompressError, match="at least 2"):
        ensemble([_mlp(5)])


def test_a_posterior_round_trips_through_a_keras_file(members, digits, tmp_path):
    x, _ = digits
    for posterior in (ensemble(members), mc_dropout(members[1], samples=4)):
        path = tmp_path / f"{posterior.kind}.keras"
        posterior.save(path)
        back = keras.models.load_model(path)
        got = back.predict(x[:20], verbose=0)
        want = posterior.predict(x[:20])
        for name in OUTPUT_NAMES:
            np.testing.assert_allclose(got[name], want[name], atol=1e-6)


def test_clones_of_one_model_make_an_ensemble(members, digits):
    x, _ = digits
    clones = [keras.models.clone_model(members[0]) for _ in range(3)]
    posterior = ensemble(clones)
    assert len({m.name for m in clones}) == 3
    assert posterior.member_logits(x[:4]).shape == (4, 3, 10)


def test_a_stacked_model_is_a_posterior():
    inp = keras.Input((5,))
    logits = keras.layers.Reshape((3, 4))(keras.layers.Dense(12)(inp))
    posterior = from_stacked(keras.Model(inp, logits))
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    out = posterior.predict(x)
    np.testing.assert_allclose(out["knowledge"], posterior.reference(x)["knowledge"], atol=1e-5)
    with pytest.raises(TfcompressError, match=r"\[batch, members, classes\]"):
        from_stacked(keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)]))


def test_storage_is_counted_the_seeds_ways():
    members = [_mlp(seed) for seed in range(4)]
    mask = np.random.default_rng(0).random((64, 32)) < 0.5
    for m in members:                         # one shared sparse structure
        kernel, bias = m.layers[0].get_weights()
        m.layers[0].set_weights([kernel * mask, bias])
    report = storage_accounting(members)
    n = int(mask.sum()) + 32 * 10
    assert report.shared_mask and report.nonzero == n
    assert (report.coo_entries, report.shared_entries) == (3 * n * 4, 2 * n + n * 4)
    assert report.index_free_entries is None
    kernel, bias = members[1].layers[0].get_weights()
    members[1].layers[0].set_weights([kernel * ~mask, bias])
    assert not storage_accounting(members).shared_mask
    dense = storage_accounting([_mlp(7), _mlp(8)])
    assert dense.index_free_entries == dense.dense_entries == 2 * (64 * 32 + 32 * 10)


def test_the_cli_converts_a_saved_posterior(members, digits, tmp_path):
    import json
    import subprocess
    import sys

    x, _ = digits
    ensemble(members).save(tmp_path / "posterior.keras")
    np.savez(tmp_path / "calib.npz", x=x[:200])
    out = tmp_path / "posterior.tflite"
    run = subprocess.run([sys.executable, "-m", "tfcompress", "convert", str(tmp_path / "posterior.keras"),
                          "-o", str(out), "--int8", "--calibration", str(tmp_path / "calib.npz"),
                          "--dense-as-conv", "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["int8_coverage"] == 1.0 and "FULLY_CONNECTED" not in report["ops"]
    tfl = run_tflite(out, x[1200:1300])
    assert sorted(tfl) == sorted(OUTPUT_NAMES)
    micro = subprocess.run([sys.executable, "-m", "tfcompress", "micro", str(out), "-o", str(tmp_path / "m"),
                            "--json"], capture_output=True, text=True, timeout=600)
    assert micro.returncode == 0, micro.stderr[-2000:]
    assert json.loads(micro.stdout)["identical"]
