"""Uncertainty metrics on NumPy arrays, and the same metrics for a `.tflite` file.

Every function takes predictive probabilities ``probs`` shaped ``(N, K)`` (rows on the simplex:
the posterior predictive of eq. 2 / 4 of the seed paper, or any classifier's softmax) and
integer labels ``(N,)`` (or one-hot rows ``(N, K)``). Definitions:

* accuracy: ``mean(argmax_k p_ik == y_i)``.
* negative log-likelihood: ``-(1/N) sum_i log p_{i, y_i}`` (probabilities floored at ``eps``).
* Brier score (Brier 1950, "Verification of forecasts expressed in terms of probability",
  eq. 1): ``(1/N) sum_i sum_k (p_ik - [y_i = k])^2``, in ``[0, 2]`` (not halved).
* expected calibration error (Naeini et al. 2015; Guo et al. 2017, "On Calibration of Modern
  Neural Networks", eq. 3): the confidences ``c_i = max_k p_ik`` are put into ``M = 15``
  equal-width bins ``B_m = {i : c_i in ((m - 1) / M, m / M]}`` (a confidence of exactly 0 goes
  to the first bin) and ``ECE = sum_m |B_m| / N |acc(B_m) - conf(B_m)|``;
  ``reliability_diagram`` returns the per-bin terms (Guo et al., fig. 1).
* out-of-distribution detection (Hendrycks and Gimpel 2017, "A Baseline for Detecting
  Misclassified and Out-of-Distribution Examples"): a *score* per input, larger meaning "more
  likely out of distribution", with the OOD inputs as the positive class. ``auroc`` is the
  area under the ROC curve (the Mann-Whitney statistic ``P(s_ood > s_in) + P(s_ood = s_in) / 2``);
  ``fpr_at_tpr`` the fraction of in-distribution inputs flagged at the largest threshold that
  flags ``tpr`` (95%) of the OOD inputs. Scores: ``max_softmax`` = ``1 - max_k p_k`` and
  ``total`` = ``H[p]`` (total uncertainty, eq. 3) of any probabilities (``uncertainty_scores``);
  ``knowledge`` = the mutual information ``I[y, theta]`` (eq. 3: total minus expected data
  uncertainty) of S members (``evaluate_posterior``).
* selective prediction (El-Yaniv and Wiener 2010; Geifman and El-Yaniv 2017, "Selective
  Classification for Deep Neural Networks"): reject the inputs of highest uncertainty first;
  ``selective_prediction`` gives the accuracy of the kept inputs at every rejection rate
  ``r = (N - k) / N``, ``k = N, ..., 1`` kept, and its area ``(1 / N) sum_k acc(k)`` (one minus
  the AURC of Geifman et al. 2019). Inputs tied in uncertainty are rejected together in
  expectation: a cut through a tie counts the tie's mean accuracy for its kept part, so the
  curve does not depend on the inputs' order.

`evaluate_posterior` evaluates S members' stacked logits (eq. 4 and the decomposition of eq. 3
by `tfcompress.uncertainty.predictive.decompose`); `evaluate_tflite_uncertainty` runs a
`.tflite` file and reads its outputs by name (see ``OUTPUT_ROLES``).

Example:

>>> import numpy as np
>>> from tfcompress.uncertainty.metrics import accuracy, expected_calibration_error
>>> probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
>>> labels = np.array([0, 1, 1])
>>> round(accuracy(probs, labels), 4)
0.6667
>>> round(expected_calibration_error(probs, labels), 4)
0.4
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.uncertainty.predictive import decompose

NUM_BINS = 15
#: what `evaluate_tflite_uncertainty` reads from a file, each found by this name (see there)
OUTPUT_ROLES = ("probs", "log_probs", "logits", "total", "data", "knowledge")
SCORES = ("max_softmax", "total", "knowledge")


# ------------------------------------------------------------------ input checks


def _probs(probs: Any, where: str) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise TfcompressError(f"probabilities must be shaped (N, K) with N >= 1 and K >= 2, got {p.shape}",
                              where, "pass one row of class probabilities per input")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise TfcompressError("probabilities must be finite and non-negative", where,
                              "pass softmax outputs, not logits")
    return p


def _labels(labels: Any, n: int, k: int, where: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == k:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if y.shape[0] != n:
        raise TfcompressError(f"{n} rows of probabilities but {y.shape[0]} labels", where,
                              "pass one label per input")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise TfcompressError("labels must be integers (or one-hot rows)", where, "pass class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise TfcompressError(f"labels must be in [0, {k}), got [{y.min()}, {y.max()}]", where,
                              "pass class indices of the probabilities' columns")
    return y


def _scores(scores: Any, name: str, where: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise TfcompressError(f"{name} must be a non-empty array of finite scores", where,
                              "pass one score per input")
    return s


def _checked(probs, labels, where: str) -> tuple[np.ndarray, np.ndarray]:
    p = _probs(probs, where)
    return p, _labels(labels, p.shape[0], p.shape[1], where)


# ------------------------------------------------------------------ proper scores, calibration


def accuracy(probs: Any, labels: Any) -> float:
    """Top-1 accuracy ``mean(argmax_k p_ik == y_i)``.

    Example:

    >>> round(accuracy([[0.2, 0.8], [0.6, 0.4]], [1, 1]), 2)
    0.5
    """
    p, y = _checked(probs, labels, "accuracy")
    return float(np.mean(p.argmax(axis=1) == y))


#: below this probability of the label, the NLL reads ``log_probs`` (see negative_log_likelihood)
LOG_PROBS_BELOW = 1.0 / 16


def negative_log_likelihood(probs: Any, labels: Any, *, log_probs: Any = None, eps: float = 1e-12) -> float:
    """``-(1/N) sum_i log p_{i, y_i}``: the posterior predictive's test log-likelihood, negated.

    ``log_probs`` (same shape), when given, is read where the label's probability is below
    ``LOG_PROBS_BELOW`` (1/16) and ``log(probs)`` above it: an int8 file's probabilities have an
    absolute step of about 1/256 (exact near 1, rounded to 0 when small), its log-probabilities
    an absolute step of about 1/16 nat (kept when small, coarse near 0). Read alone, the
    log-probabilities of a compiled posterior moved the NLL by 0.016-0.022 against the float
    model; read this way, by 0.002 (benchmarks/NOTES.md). Otherwise probabilities are floored at
    ``eps``.

    Example:

    >>> round(negative_log_likelihood([[0.5, 0.5], [0.9, 0.1]], [0, 0]), 4)
    0.3993
    """
    p, y = _checked(probs, labels, "negative_log_likelihood")
    if log_probs is not None:
        lp = np.asarray(log_probs, dtype=np.float64)
        if lp.shape != p.shape or not np.all(np.isfinite(lp)):
            raise TfcompressError(f"log_probs shaped {lp.shape} (or not finite) for probabilities {p.shape}",
                                  "negative_log_likelihood", "pass finite log-probabilities of the same shape")
        rows = np.arange(len(y))
        label_p = p[rows, y]
        picked = np.where(label_p >= LOG_PROBS_BELOW, np.log(np.maximum(label_p, eps)), lp[rows, y])
    else:
        picked = np.log(np.maximum(p[np.arange(len(y)), y], eps))
    return float(-np.mean(picked))


def brier_score(probs: Any, labels: Any) -> float:
    """Brier (1950): ``(1/N) sum_i sum_k (p_ik - [y_i = k])^2``, in ``[0, 2]``.

    Example:

    >>> round(brier_score([[1.0, 0.0], [0.5, 0.5]], [0, 1]), 3)
    0.25
    """
    p, y = _checked(probs, labels, "brier_score")
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


@dataclass
class ReliabilityDiagram:
    """Per-bin calibration (Guo et al. 2017, fig. 1): bin ``m`` holds confidences in
    ``(edges[m], edges[m + 1]]``; ``confidence`` / ``accuracy`` are NaN for an empty bin.

    Example:

    >>> d = reliability_diagram([[0.9, 0.1], [0.8, 0.2]], [0, 1], num_bins=2)
    >>> d.counts.tolist(), d.accuracy.tolist(), round(d.ece, 2)
    ([0, 2], [nan, 0.5], 0.35)
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Guo et al. 2017, eq. 3: ``sum_m |B_m| / N |acc(B_m) - conf(B_m)|``."""
        used = self.counts > 0
        gap = np.abs(self.accuracy[used] - self.confidence[used])
        return float(np.sum(self.counts[used] * gap) / np.sum(self.counts))

    def to_dict(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in asdict(self).items()}


def reliability_diagram(probs: Any, labels: Any, num_bins: int = NUM_BINS) -> ReliabilityDiagram:
    """Counts, mean confidence and accuracy of the ``num_bins`` equal-width confidence bins.

    Example:

    >>> d = reliability_diagram([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]], [0, 1, 1], num_bins=5)
    >>> d.counts.tolist()
    [0, 0, 1, 1, 1]
    """
    p, y = _checked(probs, labels, "reliability_diagram")
    if int(num_bins) != num_bins or num_bins < 1:
        raise TfcompressError(f"num_bins must be a positive integer, got {num_bins!r}", "reliability_diagram",
                              "use e.g. 15")
    num_bins = int(num_bins)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # the number of inner edges strictly below c: bin m holds (edges[m], edges[m + 1]]
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, num_bins) / counts
        mean_accuracy = np.bincount(index, correct, num_bins) / counts
    return ReliabilityDiagram(edges, counts, mean_confidence, mean_accuracy)


def expected_calibration_error(probs: Any, labels: Any, num_bins: int = NUM_BINS) -> float:
    """ECE with ``num_bins`` (15) equal-width bins on the max probability (Guo et al. 2017, eq. 3).

    Example:

    >>> round(expected_calibration_error([[0.9, 0.1], [0.2, 0.8]], [0, 0]), 3)
    0.45
    """
    return reliability_diagram(probs, labels, num_bins).ece


# ------------------------------------------------------------------ uncertainty scores, OOD


def _entropy(p: np.ndarray) -> np.ndarray:
    """``-sum_k p_k log p_k`` over the last axis (0 log 0 = 0), in nats."""
    return np.sum(p * -np.log(np.where(p > 0, p, 1.0)), axis=-1)


def uncertainty_scores(probs: Any) -> dict[str, np.ndarray]:
    """Per-input scores of predictive probabilities, larger = more uncertain: ``max_softmax``
    (``1 - max_k p_k``) and ``total`` (``H[p]`` in nats, the total uncertainty of eq. 3). The
    knowledge and data terms need the members: `evaluate_posterior`.

    Example:

    >>> s = uncertainty_scores([[0.5, 0.5], [1.0, 0.0]])
    >>> s["max_softmax"].tolist(), s["total"].round(4).tolist()
    ([0.5, 0.0], [0.6931, 0.0])
    """
    p = _probs(probs, "uncertainty_scores")
    return {"max_softmax": 1.0 - p.max(axis=1), "total": _entropy(p)}


def auroc(scores_in: Any, scores_ood: Any) -> float:
    """Area under the ROC curve of telling OOD inputs (positive) by a score (larger = OOD).

    Computed as the Mann-Whitney statistic with midranks: ``P(s_ood > s_in) + P(s_ood = s_in) / 2``.

    Example:

    >>> auroc([0.1, 0.2, 0.3], [0.25, 0.9])
    0.8333333333333334
    """
    s_in = _scores(scores_in, "scores_in", "auroc")
    s_out = _scores(scores_ood, "scores_ood", "auroc")
    both = np.concatenate([s_in, s_out])
    order = np.argsort(both, kind="mergesort")
    sorted_scores = both[order]
    # midranks (1-based) of tied values
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(both)]
    ranks = np.empty(len(both))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    n_in, n_out = len(s_in), len(s_out)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def fpr_at_tpr(scores_in: Any, scores_ood: Any, tpr: float = 0.95) -> float:
    """Fraction of in-distribution inputs flagged when ``tpr`` of the OOD inputs are (OOD positive).

    The threshold is the largest score ``t`` with ``mean(s_ood >= t) >= tpr`` and the result
    ``mean(s_in >= t)``: the lowest false-positive rate on the ROC curve at that true-positive rate.

    Example:

    >>> fpr_at_tpr([0.1, 0.2, 0.3, 0.4], [0.35, 0.5], tpr=0.95)
    0.25
    """
    s_in = _scores(scores_in, "scores_in", "fpr_at_tpr")
    s_out = _scores(scores_ood, "scores_ood", "fpr_at_tpr")
    if not 0.0 < float(tpr) <= 1.0:
        raise TfcompressError(f"tpr must be in (0, 1], got {tpr!r}", "fpr_at_tpr", "use e.g. 0.95")
    flagged = math.ceil(float(tpr) * len(s_out) - 1e-9)  # OOD inputs the threshold must reach
    threshold = np.sort(s_out)[::-1][max(flagged, 1) - 1]
    return float(np.mean(s_in >= threshold))


# ------------------------------------------------------------------ selective prediction


@dataclass
class SelectiveCurve:
    """Accuracy of the kept inputs against the rejection rate (most uncertain rejected first).

    ``rejection[j] = j / N`` for ``j = 0, ..., N - 1`` inputs rejected; ``area`` is the mean of
    ``accuracy`` (the area under the curve over coverage, ``1 - AURC``).

    Example:

    >>> curve = selective_prediction([[0.9, 0.1], [0.6, 0.4]], [0, 1])
    >>> curve.accuracy_at(0.0), curve.accuracy_at(0.5), curve.area
    (0.5, 1.0, 0.75)
    """

    rejection: np.ndarray
    accuracy: np.ndarray
    area: float

    def accuracy_at(self, rejection: float) -> float:
        """Accuracy when at least the fraction ``rejection`` (in [0, 1)) of the inputs is rejected."""
        if not 0.0 <= rejection < 1.0:
            raise TfcompressError(f"rejection must be in [0, 1), got {rejection!r}", "SelectiveCurve.accuracy_at",
                                  "pass a fraction of rejected inputs")
        n = len(self.rejection)
        return float(self.accuracy[min(math.ceil(rejection * n - 1e-9), n - 1)])


def selective_prediction(probs: Any, labels: Any, uncertainty: Any = None) -> SelectiveCurve:
    """Accuracy-rejection curve: reject by ``uncertainty`` (default ``1 - max_k p_k``), largest first.

    Example:

    >>> curve = selective_prediction([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]], [0, 1, 0])
    >>> curve.accuracy.tolist()  # 0, 1 then 2 of 3 rejected (the 0.6 one first)
    [0.6666666666666666, 1.0, 1.0]
    """
    p, y = _checked(probs, labels, "selective_prediction")
    u = uncertainty_scores(p)["max_softmax"] if uncertainty is None else _scores(uncertainty, "uncertainty",
                                                                                 "selective_prediction")
    if len(u) != len(y):
        raise TfcompressError(f"{len(u)} uncertainties for {len(y)} inputs", "selective_prediction",
                              "pass one uncertainty per input")
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    order = np.argsort(u, kind="mergesort")  # most certain first
    u_sorted, c_sorted = u[order], correct[order]
    n = len(y)
    # tie groups: a prefix ending inside a group counts the group's mean correctness per input
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    group_sum = np.add.reduceat(c_sorted, starts)
    before = np.r_[0.0, np.cumsum(group_sum)[:-1]]
    group_of = np.repeat(np.arange(len(starts)), ends - starts)
    kept = np.arange(1, n + 1)
    rate = group_sum[group_of] / (ends - starts)[group_of]
    correct_kept = before[group_of] + (kept - starts[group_of]) * rate
    acc_by_kept = correct_kept / kept  # acc_by_kept[k - 1]: the k most certain inputs kept
    accuracy_curve = acc_by_kept[::-1]  # j = N - k rejected
    return SelectiveCurve(np.arange(n) / n, accuracy_curve, float(np.mean(acc_by_kept)))


# ------------------------------------------------------------------ everything at once


@dataclass
class UncertaintyReport:
    """The metrics of one evaluation (`evaluate_uncertainty`, `evaluate_tflite_uncertainty`).

    ``selective_area`` and ``ood`` are keyed by score (``SCORES`` the input has);
    ``ood[score]`` holds ``auroc`` and ``fpr_at_95_tpr``.

    Example:

    >>> report = evaluate_uncertainty([[0.9, 0.1], [0.3, 0.7]], [0, 1])
    >>> report.accuracy, sorted(report.to_dict()["selective_area"])
    (1.0, ['max_softmax', 'total'])
    """

    accuracy: float
    nll: float
    ece: float
    brier: float
    num_samples: int
    selective_area: dict[str, float]
    reliability: ReliabilityDiagram
    ood: dict[str, dict[str, float]] = field(default_factory=dict)
    num_ood_samples: int = 0
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("accuracy", "nll", "ece", "brier", "num_samples", "selective_area",
                                             "ood", "num_ood_samples", "outputs")}
        out["reliability"] = self.reliability.to_dict()
        return out


def evaluate_uncertainty(
    probs: Any,
    labels: Any,
    *,
    log_probs: Any = None,
    scores: Mapping[str, Any] | None = None,
    probs_ood: Any = None,
    scores_ood: Mapping[str, Any] | None = None,
    num_bins: int = NUM_BINS,
) -> UncertaintyReport:
    """All metrics of the module docstring for in-distribution ``probs`` (and OOD ``probs_ood``).

    ``scores`` / ``scores_ood`` map score names (``"total"``, ``"knowledge"``, ...) to per-input
    arrays; ``max_softmax`` and ``total`` are computed from the probabilities when missing.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet(np.ones(3), size=20)
    >>> q = rng.dirichlet(np.ones(3), size=10)
    >>> report = evaluate_uncertainty(p, p.argmax(1), probs_ood=q)
    >>> report.accuracy, sorted(report.ood)
    (1.0, ['max_softmax', 'total'])
    """
    p, y = _checked(probs, labels, "evaluate_uncertainty")
    all_scores = {**uncertainty_scores(p), **{k: _scores(v, k, "evaluate_uncertainty") for k, v in (scores or {}).items()}}
    diagram = reliability_diagram(p, y, num_bins)
    report = UncertaintyReport(
        accuracy=accuracy(p, y),
        nll=negative_log_likelihood(p, y, log_probs=log_probs),
        ece=diagram.ece,
        brier=brier_score(p, y),
        num_samples=len(y),
        selective_area={k: selective_prediction(p, y, all_scores[k]).area for k in SCORES if k in all_scores},
        reliability=diagram,
    )
    if probs_ood is not None:
        q = _probs(probs_ood, "evaluate_uncertainty(probs_ood)")
        if q.shape[1] != p.shape[1]:
            raise TfcompressError(f"OOD probabilities have {q.shape[1]} classes, the others {p.shape[1]}",
                                  "probs_ood", "pass the same model's outputs on the OOD inputs")
        ood_scores = {**uncertainty_scores(q),
                      **{k: _scores(v, k, "evaluate_uncertainty") for k, v in (scores_ood or {}).items()}}
        report.num_ood_samples = len(q)
        for name in SCORES:
            if name in all_scores and name in ood_scores:
                report.ood[name] = {"auroc": auroc(all_scores[name], ood_scores[name]),
                                    "fpr_at_95_tpr": fpr_at_tpr(all_scores[name], ood_scores[name], 0.95)}
    return report


def evaluate_posterior(member_logits: Any, labels: Any, member_logits_ood: Any = None, *,
                       num_bins: int = NUM_BINS) -> UncertaintyReport:
    """`evaluate_uncertainty` of S members' logits ``[N, S, K]``: the posterior predictive (eq. 4)
    and the total / knowledge scores of eq. 3, by `tfcompress.uncertainty.predictive.decompose`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(20, 3, 4))
    >>> report = evaluate_posterior(z, rng.integers(0, 4, 20), 3 * rng.normal(size=(10, 3, 4)))
    >>> sorted(report.ood)
    ['knowledge', 'max_softmax', 'total']
    """
    def parts(z, what):
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 3 or z.shape[1] < 1 or z.shape[2] < 2 or not np.all(np.isfinite(z)):
            raise TfcompressError(f"{what} shaped {z.shape}, expected finite [N, S, K] member logits",
                                  "evaluate_posterior", "stack the members' logits on axis 1")
        return decompose(z)

    inside = parts(member_logits, "member_logits")
    kwargs: dict[str, Any] = {"log_probs": inside["log_probs"], "num_bins": num_bins,
                              "scores": {"total": inside["total"], "knowledge": inside["knowledge"]}}
    if member_logits_ood is not None:
        ood = parts(member_logits_ood, "member_logits_ood")
        kwargs.update(probs_ood=ood["probs"], scores_ood={"total": ood["total"], "knowledge": ood["knowledge"]})
    return evaluate_uncertainty(inside["probs"], labels, **kwargs)


# ------------------------------------------------------------------ a .tflite file


def _resolve_outputs(names: list[str], outputs: Mapping[str, str | int] | None, where: str) -> dict[str, str]:
    """Role (``OUTPUT_ROLES``) -> the name of the file output to read it from (the convention of
    `evaluate_tflite_uncertainty`); ``names`` are the file's outputs in position order."""
    unknown = sorted(set(outputs or {}) - set(OUTPUT_ROLES))
    if unknown:
        raise TfcompressError(f"unknown output roles {unknown}", "outputs", f"use roles among {OUTPUT_ROLES}")
    found: dict[str, str] = {}
    for role, ref in (outputs or {}).items():
        if isinstance(ref, int | np.integer) and not isinstance(ref, bool):
            if not 0 <= int(ref) < len(names):
                raise TfcompressError(f"output {role!r}: position {ref} out of range ({len(names)} outputs)",
                                      where, "pass a position in [0, number of outputs)")
            found[role] = names[int(ref)]
        elif ref in names:
            found[role] = str(ref)
        else:
            raise TfcompressError(f"output {role!r}: the file has no output named {ref!r}", where,
                                  f"use one of {names} or a position")
    for role in OUTPUT_ROLES:
        if role not in found and role in names:
            found[role] = role
    if not any(r in found for r in ("probs", "log_probs", "logits")):
        if len(names) != 1:
            raise TfcompressError(
                f"none of the outputs is named probs, log_probs or logits (outputs {names})", where,
                "name the Keras outputs (a dict {'probs': ...}) or pass outputs={'probs': <name or position>}")
        found["probs"] = names[0]
    return found


def _read_roles(values: dict[str, np.ndarray], roles: dict[str, str], where: str) -> dict[str, np.ndarray]:
    got = {role: np.asarray(values[name], np.float64) for role, name in roles.items()}
    n = len(next(iter(got.values())))
    if "probs" not in got and "log_probs" not in got:
        got.update({k: v for k, v in decompose(got["logits"].reshape(n, 1, -1)).items() if k.endswith("probs")})
    probs = got["probs"] if "probs" in got else np.exp(got["log_probs"])
    probs = np.clip(probs.reshape(n, -1), 0.0, None)
    totals = probs.sum(axis=1, keepdims=True)
    # int8 rounding moves the sums (< 0.01 on a 3-member posterior's test inputs, down to 0.86 on OOD
    # inputs 4x wider than the calibration data, whose activations saturate); logits do not sum to 1
    if np.any(np.abs(totals - 1.0) > 0.25):
        raise TfcompressError(f"the probabilities' rows sum to [{totals.min():.3f}, {totals.max():.3f}], not 1",
                              where, "point outputs={'logits': ...} at a logits output, or 'probs' at softmax outputs")
    out = {"probs": probs / totals}  # int8 rounding: back on the simplex
    if "log_probs" in got:
        out["log_probs"] = got["log_probs"].reshape(probs.shape)
    for role in ("total", "data", "knowledge"):
        if role in got:
            out[role] = got[role].reshape(n)
    if "knowledge" not in out and "total" in out and "data" in out:
        out["knowledge"] = out["total"] - out["data"]
    return out


def evaluate_tflite_uncertainty(
    path: str | os.PathLike | bytes,
    x: np.ndarray,
    y: np.ndarray,
    x_ood: np.ndarray | None = None,
    *,
    outputs: Mapping[str, str | int] | None = None,
    num_bins: int = NUM_BINS,
    **runner_kwargs: Any,
) -> UncertaintyReport:
    """Run a `.tflite` classifier on ``x`` (and ``x_ood``) and return `evaluate_uncertainty`'s report.

    The outputs it reads, by role (``OUTPUT_ROLES``): ``probs`` (or else ``log_probs``, or
    else ``logits`` through a softmax), ``log_probs`` (the NLL reads it when present: an int8
    file rounds small probabilities to 0) and the per-input ``total``, ``data`` and
    ``knowledge`` uncertainties of eq. 3 (``total`` is ``H[probs]`` when missing,
    ``knowledge`` is ``total - data``). The file is run with
    `tfcompress.uncertainty.posterior.run_tflite`, which names each output by the serving
    signature (``output_<i>`` in a file without one). The convention, role by role:

    1. ``outputs[role]`` when given: an output name or a position among the outputs (this
       overrides the rest);
    2. the output named ``role``: a posterior compiled by `tfcompress.uncertainty.Posterior`
       (``OUTPUT_NAMES``), or any Keras model whose outputs are a dict ``{"probs": ..., "total":
       ...}``, exports with these names;
    3. a file with a single output and none of the names: that output is ``probs``.

    The report's ``outputs`` says which output each role was read from; ``runner_kwargs`` go to
    `tfcompress.export.runtime.ModelRunner` (``delegate``, ``reference_kernels``, ...).

    Example:

    >>> import os, tempfile
    >>> import keras
    >>> from tfcompress.export import to_tflite
    >>> inputs = keras.Input((4,))
    >>> logits = keras.layers.Dense(3)(inputs)
    >>> model = keras.Model(inputs, {"probs": keras.layers.Softmax()(logits), "logits": logits})
    >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
    >>> _ = to_tflite(model, path, quantization=None)
    >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    >>> report = evaluate_tflite_uncertainty(path, x, np.zeros(8, int), x_ood=3 * x)
    >>> report.outputs, sorted(report.ood)
    ({'probs': 'probs', 'logits': 'logits'}, ['max_softmax', 'total'])
    """
    from tfcompress.export.tflite_file import load_tflite
    from tfcompress.uncertainty.posterior import output_positions, run_tflite

    model = load_tflite(path)
    where = model.path or "<bytes>"
    positions = output_positions(model.data)
    names = sorted(positions, key=positions.get)
    roles = _resolve_outputs(names, outputs, where)
    got = _read_roles(run_tflite(model.data, x, **runner_kwargs), roles, where)
    scores = {k: got[k] for k in ("total", "knowledge") if k in got}
    kwargs: dict[str, Any] = {"log_probs": got.get("log_probs"), "scores": scores, "num_bins": num_bins}
    if x_ood is not None:
        got_ood = _read_roles(run_tflite(model.data, x_ood, **runner_kwargs), roles, where)
        kwargs["probs_ood"] = got_ood["probs"]
        kwargs["scores_ood"] = {k: got_ood[k] for k in ("total", "knowledge") if k in got_ood}
    report = evaluate_uncertainty(got["probs"], y, **kwargs)
    report.outputs = roles
    return report
