"""Temperature scaling of posteriors (issue 21): the fitted T against SciPy, folded into the
members exactly, and the calibrated posterior still one int8 file TFLM runs bit for bit."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from tfcompress.errors import TfcompressError
from tfcompress.uncertainty import (
    FrozenNoise,
    ensemble,
    fit_temperature,
    from_stacked,
    mc_dropout,
    scale_logits,
    tempered_nll,
)


def _nll_reference(z, y, t):
    # independent form: log of the mean of member softmaxes, via scipy's logsumexp
    log_p = z / t - logsumexp(z / t, axis=-1, keepdims=True)
    log_mean = logsumexp(log_p, axis=1) - np.log(z.shape[1])
    return -log_mean[np.arange(len(y)), y].mean()


def _member(seed, inputs=6, classes=4, hidden=16, dropout=0.0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((inputs,)), keras.layers.Dense(hidden, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential([*layers, keras.layers.Dense(classes, name="logits")])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype("float32")
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0).astype(int)
    return x, y


def test_tempered_nll_and_fit_agree_with_scipy():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    z = 4.0 * rng.normal(size=(400, 3, 5)) + 3.0 * np.eye(5)[y][:, None, :]
    for t in (0.3, 1.0, 2.5):
        assert tempered_nll(z, y, t) == pytest.approx(_nll_reference(z, y, t), rel=1e-10)
    ours = fit_temperature(z, y)
    best = minimize_scalar(lambda lt: _nll_reference(z, y, np.exp(lt)), bounds=(np.log(0.05), np.log(20)),
                           method="bounded", options={"xatol": 1e-8})
    assert ours == pytest.approx(np.exp(best.x), rel=1e-3)
    assert tempered_nll(z, y, ours) <= best.fun + 1e-7
    # one model: [N, C] is the S = 1 case
    assert tempered_nll(z[:, 0], y, 1.7) == pytest.approx(_nll_reference(z[:, :1], y, 1.7), rel=1e-10)


def test_fit_temperature_refuses_bad_input():
    z = np.zeros((4, 3))
    with pytest.raises(TfcompressError, match="labels for 4 rows"):
        fit_temperature(z, np.array([0, 1]))
    with pytest.raises(TfcompressError, match="integers in"):
        fit_temperature(z, np.eye(3)[[0, 1, 2, 0]])
    with pytest.raises(TfcompressError, match="0 < low < high"):
        fit_temperature(z, np.array([0, 1, 2, 0]), bounds=(2.0, 1.0))
    with pytest.raises(TfcompressError, match="finite"):
        fit_temperature(np.full((4, 3), np.nan), np.array([0, 1, 2, 0]))


def test_scale_logits_folds_into_the_last_linear_layer(data):
    x, _ = data
    model = _member(0)
    before = model.predict(x, verbose=0)
    scaled = scale_logits(model, 0.4)
    assert [type(layer) for layer in scaled.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_allclose(scaled.predict(x, verbose=0), 0.4 * before, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)  # the original is untouched
    # a conv head folds too; an activation at the end cannot, so a Rescaling follows it
    conv = keras.Sequential([keras.Input((5, 5, 2)), keras.layers.Conv2D(3, 3), keras.layers.Flatten()])
    relu = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu")])
    img = np.random.default_rng(2).normal(size=(3, 5, 5, 2)).astype("float32")
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in scale_logits(conv, 2.0).layers)
    np.testing.assert_allclose(scale_logits(conv, 2.0).predict(img, verbose=0), 2.0 * conv.predict(img, verbose=0),
                               rtol=1e-5, atol=1e-6)
    tempered = scale_logits(relu, 0.5)
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in tempered.layers)
    np.testing.assert_allclose(tempered.predict(x, verbose=0), 0.5 * relu.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(TfcompressError, match="finite and > 0"):
        scale_logits(model, 0.0)


def test_calibrated_ensemble_is_the_fitted_temperature_folded_in(data, tmp_path):
    x, y = data
    members = [_member(seed) for seed in range(3)]
    posterior = ensemble(members)
    raw = posterior.member_logits(x)
    calibrated = posterior.calibrate(x, y)
    assert calibrated.temperature == pytest.approx(fit_temperature(raw, y))
    np.testing.assert_allclose(calibrated.member_logits(x), raw / calibrated.temperature, rtol=1e-4, atol=1e-5)
    out = calibrated.predict(x)
    assert -np.log(out["probs"][np.arange(len(y)), y]).mean() <= tempered_nll(raw, y, 1.0) + 1e-6
    np.testing.assert_allclose(out["total"], out["data"] + out["knowledge"], atol=1e-5)
    # calibrating again from the calibrated posterior finds the same T (it is relative to the members)
    assert calibrated.calibrate(x, y).temperature == pytest.approx(calibrated.temperature, rel=1e-3)

    plain = posterior.to_tflite(tmp_path / "plain.tflite", x, compare_single=False)
    report = calibrated.to_tflite(tmp_path / "calibrated.tflite", x, micro=True, micro_samples=x[:8],
                                  compare_single=False)
    assert report.ops == plain.ops and report.int8_coverage == 1.0  # folded: no op added
    assert report.tflm_identical
    calibrated.save(tmp_path / "calibrated.keras")
    reloaded = keras.models.load_model(tmp_path / "calibrated.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0)["probs"], out["probs"], atol=1e-6)


def test_calibrated_mc_dropout_keeps_its_masks(data):
    x, y = data
    model = _member(5, dropout=0.5)
    posterior = mc_dropout(model, samples=4, seed=3)
    calibrated = posterior.with_temperature(1.6)
    assert any(isinstance(layer, FrozenNoise) for layer in calibrated.logits_model.layers)
    np.testing.assert_allclose(calibrated.member_logits(x), posterior.member_logits(x) / 1.6, rtol=1e-4, atol=1e-5)


def test_stacked_posteriors_get_one_rescaling(data, tmp_path):
    x, y = data
    members = [_member(seed) for seed in range(2)]
    inputs = keras.Input((6,))
    stacked = keras.layers.Concatenate(axis=1)([keras.layers.Reshape((1, 4))(m(inputs)) for m in members])
    posterior = from_stacked(keras.Model(inputs, stacked))
    calibrated = posterior.with_temperature(0.7)
    np.testing.assert_allclose(calibrated.member_logits(x), posterior.member_logits(x) / 0.7, rtol=1e-4, atol=1e-5)
    report = calibrated.to_tflite(tmp_path / "stacked.tflite", x, micro=True, micro_samples=x[:8],
                                  compare_single=False)
    assert report.int8_coverage == 1.0 and report.tflm_identical
    with pytest.raises(TfcompressError, match="temperature must be finite"):
        posterior.with_temperature(-1.0)
