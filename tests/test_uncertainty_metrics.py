"""tfcompress.uncertainty.metrics against independent references: scikit-learn (log loss, Brier,
ROC), explicit loops over the definitions (ECE bins, accuracy-rejection curve), Monte Carlo
(random tie-breaking, calibrated labels), and a `.tflite` file read against its Keras model."""

from __future__ import annotations

import doctest

import keras
import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy
from sklearn import metrics as skm

from tfcompress.errors import TfcompressError
from tfcompress.uncertainty import OUTPUT_NAMES, ensemble
from tfcompress.uncertainty import metrics as um


def random_probs(n, k, seed=0, concentration=0.5):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(k, concentration), size=n), rng


def test_docstring_examples_run():
    result = doctest.testmod(um, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 20 and result.failed == 0


def test_nll_brier_accuracy_match_sklearn():
    p, rng = random_probs(300, 5)
    y = rng.integers(0, 5, 300)
    assert um.negative_log_likelihood(p, y) == pytest.approx(skm.log_loss(y, p, labels=range(5)), rel=1e-10)
    assert um.brier_score(p, y) == pytest.approx(
        skm.brier_score_loss(y, p, labels=range(5), scale_by_half=False), rel=1e-10)
    assert um.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    # one-hot labels are the same labels; log_probs replace log(probs)
    onehot = np.eye(5)[y]
    assert um.brier_score(p, onehot) == pytest.approx(um.brier_score(p, y))
    assert um.negative_log_likelihood(p, y, log_probs=np.log(p)) == pytest.approx(um.negative_log_likelihood(p, y))
    # log_probs are read only where the label's probability is small (int8 rounds it to 0 there)
    q = np.array([[0.9, 0.1], [0.0, 1.0]])
    lq = np.array([[-0.0625, -2.3], [-9.0, 0.0]])
    assert um.negative_log_likelihood(q, [0, 0], log_probs=lq) == pytest.approx(-(np.log(0.9) - 9.0) / 2)
    # a zero probability of the label is floored, not inf
    assert np.isfinite(um.negative_log_likelihood([[1.0, 0.0]], [1]))


def reference_ece(p, y, m=15):
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, m + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.sum() / len(y) * abs(np.mean(pred[inside] == y[inside]) - conf[inside].mean())
    return total


def test_ece_and_reliability_diagram_match_the_definition():
    p, rng = random_probs(500, 4, seed=1)
    y = rng.integers(0, 4, 500)
    assert um.expected_calibration_error(p, y) == pytest.approx(reference_ece(p, y), abs=1e-12)
    assert um.expected_calibration_error(p, y, num_bins=7) == pytest.approx(reference_ece(p, y, 7), abs=1e-12)
    diagram = um.reliability_diagram(p, y)
    assert diagram.counts.sum() == 500 and len(diagram.edges) == 16
    # bin edges: (m/15, (m+1)/15]; a confidence on an edge belongs to the lower bin
    edge = np.linspace(0, 1, 16)
    q = np.array([[edge[1], 1 - edge[1]], [0.5, 0.5], [1.0, 0.0], [edge[8], 1 - edge[8]]])
    # max probabilities 1 - 1/15 (bin 13), 0.5 (bin 7), 1.0 (bin 14), 8/15 (bin 7)
    assert np.flatnonzero(um.reliability_diagram(q, [0, 0, 0, 0]).counts).tolist() == [7, 13, 14]
    assert um.reliability_diagram(q, [0, 0, 0, 0]).counts[7] == 2


def test_ece_is_small_for_calibrated_probabilities_and_not_for_sharpened_ones():
    # Monte Carlo: labels drawn from the probabilities are calibrated by construction
    p, rng = random_probs(20000, 3, seed=2, concentration=1.0)
    y = (rng.random((len(p), 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    assert um.expected_calibration_error(p, y) < 0.02
    sharp = p**4 / np.sum(p**4, axis=1, keepdims=True)
    assert um.expected_calibration_error(sharp, y) > 0.1


def test_auroc_matches_sklearn_with_and_without_ties():
    rng = np.random.default_rng(3)
    for s_in, s_out in [(rng.normal(0, 1, 200), rng.normal(1, 1, 150)),
                        (rng.integers(0, 4, 200).astype(float), rng.integers(1, 5, 150).astype(float))]:
        truth = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
        assert um.auroc(s_in, s_out) == pytest.approx(skm.roc_auc_score(truth, np.r_[s_in, s_out]), abs=1e-12)
    assert um.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and um.auroc([2.0, 3.0], [0.0, 1.0]) == 0.0


def reference_fpr(s_in, s_out, tpr):
    fpr, tprs, _ = skm.roc_curve(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out],
                                 drop_intermediate=False)
    return fpr[tprs >= tpr - 1e-12].min()


def test_fpr_at_95_tpr_matches_sklearn_roc_curve():
    rng = np.random.default_rng(4)
    for s_in, s_out in [(rng.normal(0, 1, 300), rng.normal(2, 1, 101)),
                        (rng.integers(0, 6, 300).astype(float), rng.integers(2, 8, 100).astype(float))]:
        for tpr in (0.95, 0.5, 1.0):
            assert um.fpr_at_tpr(s_in, s_out, tpr) == pytest.approx(reference_fpr(s_in, s_out, tpr), abs=1e-12)
    with pytest.raises(TfcompressError, match="tpr"):
        um.fpr_at_tpr([0.0], [1.0], tpr=0.0)


def test_selective_prediction_matches_a_loop_and_random_tie_breaking():
    p, rng = random_probs(60, 3, seed=5)
    y = rng.integers(0, 3, 60)
    u = rng.normal(size=60)
    curve = um.selective_prediction(p, y, u)
    correct = p.argmax(1) == y
    order = np.argsort(u)
    loop = [np.mean(correct[order[: 60 - j]]) for j in range(60)]
    np.testing.assert_allclose(curve.accuracy, loop, atol=1e-12)
    np.testing.assert_allclose(curve.rejection, np.arange(60) / 60)
    assert curve.area == pytest.approx(1 - np.mean([1 - np.mean(correct[order[:k]]) for k in range(1, 61)]))
    assert curve.accuracy_at(0.5) == pytest.approx(loop[30])
    # ties: the curve is the expectation over random tie-breaking (Monte Carlo) and order-free
    u_tied = rng.integers(0, 4, 60).astype(float)
    tied = um.selective_prediction(p, y, u_tied)
    # the uncertainties are integers: adding U(0, 0.5) breaks ties at random and nothing else
    orders = np.argsort(u_tied + 0.5 * rng.random((4000, 60)), axis=1)
    draws = (np.cumsum(correct[orders], axis=1) / np.arange(1, 61))[:, ::-1]
    standard_error = draws.std(axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(tied.accuracy - draws.mean(axis=0)) <= 5 * standard_error + 1e-12)
    perm = rng.permutation(60)
    np.testing.assert_allclose(um.selective_prediction(p[perm], y[perm], u_tied[perm]).accuracy, tied.accuracy)
    # rejecting the least confident first beats rejecting the most confident first, when the
    # prediction is right with probability max p
    q, rng = random_probs(2000, 3, seed=8)
    y_cal = np.where(rng.random(2000) < q.max(1), q.argmax(1), (q.argmax(1) + 1) % 3)
    assert um.selective_prediction(q, y_cal).area > um.selective_prediction(q, y_cal, q.max(1)).area + 0.1


def test_evaluate_posterior_matches_scipy_entropies():
    rng = np.random.default_rng(6)
    z, z_ood = rng.normal(scale=2, size=(50, 5, 4)), rng.normal(scale=2, size=(30, 5, 4))
    y = rng.integers(0, 4, 50)
    report = um.evaluate_posterior(z, y, z_ood)

    def reference_scores(logits):
        p = softmax(logits, axis=-1)
        mean = p.mean(1)
        total = entropy(mean, axis=-1)
        return mean, {"total": total, "knowledge": total - entropy(p, axis=-1).mean(1)}

    mean, scores = reference_scores(z)
    mean_ood, scores_ood = reference_scores(z_ood)
    expected = um.evaluate_uncertainty(mean, y, scores=scores, probs_ood=mean_ood, scores_ood=scores_ood)
    assert report.nll == pytest.approx(skm.log_loss(y, mean, labels=range(4)), rel=1e-9)
    for name in ("accuracy", "nll", "ece", "brier"):
        assert getattr(report, name) == pytest.approx(getattr(expected, name), rel=1e-9), name
    assert set(report.ood) == set(expected.ood) == {"max_softmax", "total", "knowledge"}
    for score in report.ood:
        assert report.ood[score] == pytest.approx(expected.ood[score], rel=1e-9), score
    assert report.selective_area == pytest.approx(expected.selective_area, rel=1e-9)
    np.testing.assert_allclose(um.uncertainty_scores(mean)["total"], scores["total"], atol=1e-12)


def test_knowledge_uncertainty_detects_disagreeing_members():
    rng = np.random.default_rng(7)
    # in distribution the members agree (knowledge 0); out of it they disagree, equally confident
    agree = np.repeat(rng.normal(scale=4, size=(200, 1, 3)), 4, axis=1)
    disagree = rng.normal(scale=4, size=(100, 4, 3))
    report = um.evaluate_posterior(agree, agree[:, 0].argmax(1), disagree)
    assert set(report.ood) == {"max_softmax", "total", "knowledge"}
    assert report.ood["knowledge"]["auroc"] > 0.99 and report.ood["knowledge"]["fpr_at_95_tpr"] < 0.05
    assert report.ood["knowledge"]["auroc"] > report.ood["max_softmax"]["auroc"]
    assert report.accuracy == 1.0 and report.num_ood_samples == 100
    assert set(report.to_dict()) >= {"accuracy", "nll", "ece", "brier", "reliability", "ood"}


def test_input_errors():
    with pytest.raises(TfcompressError, match="non-negative"):
        um.accuracy([[1.5, -0.5]], [0])
    with pytest.raises(TfcompressError, match="labels"):
        um.brier_score([[0.5, 0.5]], [0, 1])
    with pytest.raises(TfcompressError, match="in \\[0, 2\\)"):
        um.negative_log_likelihood([[0.5, 0.5]], [2])


# ------------------------------------------------------------------ .tflite files


def members(count=3, features=6, classes=4):
    out = []
    for seed in range(count):
        keras.utils.set_random_seed(seed)
        out.append(keras.Sequential([keras.Input((features,)), keras.layers.Dense(8, activation="relu"),
                                     keras.layers.Dense(classes)]))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tfcompress.export import to_tflite

    posterior = ensemble(members())
    directory = tmp_path_factory.mktemp("uncertainty_tflite")
    x = np.random.default_rng(0).normal(size=(200, 6)).astype("float32")
    to_tflite(posterior.model, directory / "posterior.tflite", quantization=None)
    posterior.to_tflite(directory / "posterior_int8.tflite", x, compare_single=False)
    inputs = keras.Input((6,))
    logits = keras.layers.Dense(4)(inputs)
    listed = keras.Model(inputs, [keras.layers.Dense(2)(inputs), logits])
    to_tflite(listed, directory / "listed.tflite", quantization=None)
    single = keras.Model(inputs, keras.layers.Softmax()(logits))
    to_tflite(single, directory / "single_int8.tflite", "int8", representative_data=x)
    return directory, posterior, listed, single


def test_tflite_posterior_outputs_give_the_keras_posteriors_metrics(exported):
    directory, posterior, _, _ = exported
    rng = np.random.default_rng(1)
    x, x_ood = rng.normal(size=(64, 6)).astype("float32"), 4 * rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 4, 64)
    expected = um.evaluate_posterior(posterior.member_logits(x), y, posterior.member_logits(x_ood))
    report = um.evaluate_tflite_uncertainty(directory / "posterior.tflite", x, y, x_ood)
    assert report.outputs == {name: name for name in OUTPUT_NAMES}
    for name in ("accuracy", "nll", "ece", "brier"):
        assert getattr(report, name) == pytest.approx(getattr(expected, name), abs=1e-5), name
    assert set(report.ood) == {"max_softmax", "total", "knowledge"}
    for score in report.ood:
        for key, value in report.ood[score].items():
            assert value == pytest.approx(expected.ood[score][key], abs=1e-6), (score, key)
    # the int8 file: the same metrics up to its rounding (outputs of ~1/256 steps)
    int8 = um.evaluate_tflite_uncertainty(directory / "posterior_int8.tflite", x, y, x_ood)
    assert int8.accuracy == pytest.approx(expected.accuracy, abs=3 / 64)
    assert int8.nll == pytest.approx(expected.nll, rel=0.05)
    assert int8.brier == pytest.approx(expected.brier, abs=0.02)
    assert int8.ood["knowledge"]["auroc"] == pytest.approx(expected.ood["knowledge"]["auroc"], abs=0.05)


def test_tflite_outputs_override_and_single_output(exported):
    directory, _, listed, single = exported
    x = np.random.default_rng(2).normal(size=(40, 6)).astype("float32")
    y = np.zeros(40, int)
    # a list output exports as output_0, output_1: none is named, so the roles must be given
    with pytest.raises(TfcompressError, match="none of the outputs is named"):
        um.evaluate_tflite_uncertainty(directory / "listed.tflite", x, y)
    report = um.evaluate_tflite_uncertainty(directory / "listed.tflite", x, y, outputs={"logits": "output_1"})
    logits = listed.predict(x, verbose=0)[1]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert report.nll == pytest.approx(um.negative_log_likelihood(probs, y), abs=1e-5)
    with pytest.raises(TfcompressError, match="no output named"):
        um.evaluate_tflite_uncertainty(directory / "listed.tflite", x, y, outputs={"probs": "nope"})
    with pytest.raises(TfcompressError, match="unknown output roles"):
        um.evaluate_tflite_uncertainty(directory / "listed.tflite", x, y, outputs={"prob": 0})
    # the int8 file's single output is read as probabilities, renormalized after rounding
    report = um.evaluate_tflite_uncertainty(directory / "single_int8.tflite", x, y)
    reference = single.predict(x, verbose=0)
    assert report.outputs == {"probs": report.outputs["probs"]}
    assert report.accuracy == pytest.approx(um.accuracy(reference, y), abs=0.05)
    assert report.brier == pytest.approx(um.brier_score(reference, y), abs=0.02)
