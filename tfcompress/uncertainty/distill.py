"""A posterior distilled into one small student: BDK, GPED, EnD^2, and the student found by pruning.

Vadera et al. (2021, "Challenges and opportunities in approximate Bayesian deep learning for
intelligent IoT systems", section 4) compress the S-sample Monte Carlo posterior of eq. (4),
``p(y|x) ~ 1/S sum_s p(y|x, theta_s)``, into one network whose cost is chosen for the device:

- **Bayesian dark knowledge** (Balan et al. 2015, "Bayesian Dark Knowledge", Algorithm 1): the
  student S(y|x, w) minimizes KL(p(y|x, D) || S(y|x, w)) to the posterior predictive of eq. (4)
  on (perturbed) training inputs. :func:`bayesian_dark_knowledge` is a
  :class:`tfcompress.distillation.Distiller` whose teacher is the members' averaged
  probabilities, so temperature (Hinton et al. 2015) and hard labels come with it.
- **GPED** (Vadera, Jalaian and Marlin 2020, "Generalized Bayesian Posterior Expectation
  Distillation for Deep Neural Networks", section 3): a student with one head per posterior
  expectation E_{p(theta|D)}[g(y, x, theta)]: the predictive (cross-entropy / KL, as BDK), the
  expected data entropy E[H p] and the mutual information (knowledge uncertainty) of the
  seed's eq. (3), each regressed with the absolute error the authors use for the entropy.
- **EnD^2** (Malinin, Mlodozeniec and Gales 2020, "Ensemble Distribution Distillation",
  eq. 7-8): the student outputs log-concentrations z, alpha = exp(z), and maximizes the
  likelihood of each member's categorical output under Dir(pi | alpha); optional temperature
  annealing (:class:`TemperatureAnnealing`) as in the authors' code.
- **The student's architecture by pruning** (seed, section 4; GPED, section 5): channel-prune
  and shrink the student at increasing sparsities, distil at each one, and keep the Pareto
  front of cost (parameters, MACs) against validation NLL (:func:`distillation_pareto`).

Members are Keras models mapping an input to class logits; an ensemble is a list of them, a
:class:`~tfcompress.uncertainty.Posterior`, a model returning ``[batch, S, classes]`` logits,
or (for the losses and for training without members) a precomputed logits stack. Perturbed
and auxiliary inputs (Balan et al.'s Gaussian noise, EnD^2's auxiliary set) come from
:func:`transfer_dataset`; the teachers run on the inputs the student sees.

Every student exports as a standard Keras model (logits; or GPED's logits plus two
non-negative heads; or EnD^2's log-concentrations), and :func:`uncertainty_model` wraps a GPED
or EnD^2 student into ``x -> {probs, log_probs, total, data, knowledge}`` (the names of
:data:`tfcompress.uncertainty.OUTPUT_NAMES`) built only from ops with int8 TFLite builtins (no
EXP, LOG or digamma). For EnD^2 the closed form needs digamma of exp(z); :class:`DirichletHead`
rewrites it exactly as ``knowledge = sum_c p_c g(z_c) - g(log alpha_0)`` with
``g(u) = psi(e^u + 1) - u`` and approximates g in int8 builtins (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from tfcompress.callbacks.pruning import UpdatePruning
from tfcompress.distillation import Distiller, soft_target_loss
from tfcompress.errors import DistillationError
from tfcompress.uncertainty.posterior import Posterior, ensemble
from tfcompress.uncertainty.predictive import OUTPUT_NAMES, UncertaintyHead, decompose

__all__ = [
    "DirichletHead",
    "EnsembleDistributionDistiller",
    "ExpectationHead",
    "ParetoPoint",
    "ParetoResult",
    "PosteriorExpectationDistiller",
    "StudentPruning",
    "TemperatureAnnealing",
    "bayesian_dark_knowledge",
    "bdk_loss",
    "dirichlet_uncertainty",
    "distillation_pareto",
    "end2_loss",
    "gped_loss",
    "gped_student",
    "transfer_dataset",
    "uncertainty_model",
]

# g(u) = psi(e^u + 1) - u ~ softplus(-u - ln 2) + (ln 2 - gamma) * sigmoid(-A (u + B)), |error| <= 0.0021
# for every real u (least-squares fit against scipy.special.digamma over u in [-16, 20]; the
# tails are exact: g -> e^-u / 2 as u -> inf and -u - gamma as u -> -inf)
_LN2 = math.log(2.0)
_TAIL = math.log(2.0) - 0.5772156649015329
_GAP_SLOPE, _GAP_SHIFT = 1.225, 1.3754


# --------------------------------------------------------------------------- ensembles


def _teacher_logits_model(teacher: Any, where: str = "teacher") -> keras.Model | None:
    """A Keras model ``x -> [batch, S, classes]`` member logits, or None (precomputed stacks)."""
    if teacher is None:
        return None
    if isinstance(teacher, Posterior):
        return teacher.logits_model
    if isinstance(teacher, list | tuple):
        return ensemble(list(teacher)).logits_model
    if isinstance(teacher, keras.Model):
        shape = tuple(teacher.outputs[0].shape) if getattr(teacher, "outputs", None) else ()
        if len(shape) != 3:
            raise DistillationError(
                f"the teacher returns shape {shape}, not [batch, members, classes] logits", where,
                "pass the list of member models, a tfcompress.uncertainty.Posterior, or a model whose "
                "output stacks the members' logits on axis 1")
        return teacher
    raise DistillationError(f"cannot use a {type(teacher).__name__} as the ensemble", where,
                            "pass a list of member models (input -> logits), a Posterior or a stacking model")


def _is_ensemble(obj: Any) -> bool:
    if isinstance(obj, Posterior | keras.Model):
        return True
    return isinstance(obj, list | tuple) and bool(obj) and all(isinstance(m, keras.Model) for m in obj)


def _stack(ensemble_or_logits: Any, x: Any = None, member_axis: int = 1, where: str = "ensemble"):
    """The members' logits as a float32 ``[batch, S, classes]`` tensor."""
    if _is_ensemble(ensemble_or_logits):
        if x is None:
            raise DistillationError("members were given without inputs", where,
                                    "pass x=... (the inputs), or the precomputed logits stack")
        return ops.cast(_teacher_logits_model(ensemble_or_logits, where)(x, training=False), "float32")
    stack = ops.cast(ops.convert_to_tensor(ensemble_or_logits), "float32")
    if len(stack.shape) != 3:
        raise DistillationError(f"the logits stack has shape {tuple(stack.shape)}, not 3-D", where,
                                "stack the members' logits as [S, batch, classes] or [batch, S, classes] "
                                "and say which with member_axis")
    if member_axis not in (0, 1):
        raise DistillationError(f"member_axis must be 0 or 1, got {member_axis}", "member_axis",
                                "0 for [S, batch, classes], 1 for [batch, S, classes]")
    return stack if member_axis == 1 else ops.transpose(stack, (1, 0, 2))


def _check_classes(student_classes: int, stack, where: str) -> None:
    if student_classes is not None and stack.shape[-1] is not None and student_classes != stack.shape[-1]:
        raise DistillationError(f"the student has {student_classes} outputs and the ensemble {stack.shape[-1]} classes",
                                where, "give the student one output per class")


def _check_temperature(temperature: float, where: str = "temperature") -> float:
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise DistillationError(f"temperature must be a number > 0, got {temperature!r}", where,
                                "use 1.0 (no softening) or a value in 1-10")
    return float(temperature)


# --------------------------------------------------------------------------- BDK


def bdk_loss(student_logits, ensemble_logits, *, x=None, member_axis: int = 1, temperature: float = 1.0):
    """Bayesian dark knowledge: T^2 * mean KL(softmax(log pbar / T) || softmax(z / T)).

    Balan et al. (2015), Algorithm 1: the student minimizes KL(p(y|x, D) || S(y|x, w)) to the
    posterior predictive, here the members' average pbar = 1/S sum_s softmax(z_s) (Vadera et
    al. 2021, eq. 4); it differs from the cross-entropy to pbar by pbar's entropy, a constant.
    ``temperature`` softens pbar as in Hinton et al. (2015): T = 1 is BDK's own loss.

    Args:
        student_logits: ``[batch, classes]``.
        ensemble_logits: the members' logits (``member_axis`` 1: ``[batch, S, classes]``; 0:
            ``[S, batch, classes]``), or the members / a Posterior with ``x``.
        x: the inputs, when the members are given.
        member_axis: where the members are in a precomputed stack.
        temperature: T.

    Example:
        >>> z = np.array([[[2.0, 0.0], [0.0, 2.0]]], "float32")   # 1 input, 2 members
        >>> round(float(bdk_loss(np.zeros((1, 2), "float32"), z)), 6)    # pbar is uniform
        0.0
    """
    temperature = _check_temperature(temperature)
    stack = _stack(ensemble_logits, x, member_axis)
    _check_classes(student_logits.shape[-1], stack, "bdk_loss")
    log_mean = UncertaintyHead()(stack)["log_probs"]
    return soft_target_loss(log_mean, student_logits, temperature)


def bayesian_dark_knowledge(student: keras.Model, members: Any, *, temperature: float = 1.0,
                            alpha: float = 0.0) -> Distiller:
    """A :class:`~tfcompress.distillation.Distiller` of the posterior predictive (Balan et al. 2015).

    The teacher returns log pbar, the log of the members' averaged probabilities (eq. 4 of
    Vadera et al. 2021), as logits: the Distiller's soft term T^2 KL(softmax(log pbar / T) ||
    softmax(z / T)) is :func:`bdk_loss`, and ``alpha`` weights the hard-label loss given to
    ``compile`` (0: distillation only; compile a loss anyway, :func:`transfer_dataset` gives
    unlabeled rows weight 0). The members are frozen.

    Args:
        student: a Keras model ``x -> logits``.
        members: the members (input -> logits), a Posterior, or a stacking model.
        temperature: T of the soft targets (1: BDK's KL).
        alpha: weight of the compiled hard-label loss.

    Returns:
        The Distiller; ``.student`` is the model to export.

    Example:
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(3)]
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> distiller = bayesian_dark_knowledge(student, members)
        >>> distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> data = transfer_dataset(np.zeros((8, 4), "float32"), noise_std=0.1, batch_size=4)
        >>> _ = distiller.fit(data, epochs=1, verbose=0)          # doctest: +SKIP
        >>> x = np.zeros((2, 4), "float32")
        >>> distiller.teacher(x).shape, round(float(distiller.compute_loss(x, np.zeros(2), distiller(x))), 3)
        (TensorShape([2, 3]), 0.0)
    """
    logits = _teacher_logits_model(members, "members")
    predictive = UncertaintyHead(name="posterior_predictive")(logits.outputs[0])
    inputs = logits.inputs[0] if len(logits.inputs) == 1 else logits.inputs
    teacher = keras.Model(inputs, predictive["log_probs"], name="bdk_teacher")
    return Distiller(student, teacher, temperature=_check_temperature(temperature), alpha=alpha)


# --------------------------------------------------------------------------- GPED


def gped_student(features: keras.Model, num_classes: int, *, name: str = "gped_student") -> keras.Model:
    """A GPED student: ``features`` followed by three heads (Vadera et al. 2020, section 3).

    Outputs, in order: ``logits`` ``[batch, classes]`` (the predictive), ``data``
    ``[batch, 1]`` (E[H p], expected data uncertainty) and ``knowledge`` ``[batch, 1]`` (the
    mutual information). The two expectation heads are ``log(C) * sigmoid(dense)``: non-negative
    and at most log C, the range of both quantities, with int8 builtins only (LOGISTIC, MUL).

    Args:
        features: a Functional / Sequential model ``x -> [batch, F]`` (the body).
        num_classes: C.

    Example:
        >>> body = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
        >>> [tuple(t.shape) for t in gped_student(body, 3).outputs]
        [(None, 3), (None, 1), (None, 1)]
    """
    if not getattr(features, "outputs", None) or len(features.outputs) != 1 or len(features.outputs[0].shape) != 2:
        raise DistillationError("the body must be a built model with one [batch, features] output",
                                getattr(features, "name", "features"), "end it with Flatten / pooling / Dense")
    if int(num_classes) < 2:
        raise DistillationError(f"num_classes must be >= 2, got {num_classes}", "num_classes")
    h = features.outputs[0]
    scale = math.log(int(num_classes))
    logits = keras.layers.Dense(int(num_classes), name="logits")(h)
    heads = [keras.layers.Rescaling(scale, name=head)(keras.layers.Dense(1, activation="sigmoid",
                                                                         name=f"{head}_gate")(h))
             for head in ("data", "knowledge")]
    inputs = features.inputs[0] if len(features.inputs) == 1 else features.inputs
    return keras.Model(inputs, [logits, *heads], name=name)


def _expectation_error(target, prediction, kind: str):
    difference = ops.reshape(ops.cast(prediction, "float32"), (-1,)) - target
    return ops.mean(ops.abs(difference) if kind == "l1" else ops.square(difference))


def gped_loss(student_outputs, ensemble_logits, *, x=None, member_axis: int = 1, temperature: float = 1.0,
              expectation_loss: str = "l1", data_weight: float = 1.0, knowledge_weight: float = 1.0,
              return_terms: bool = False):
    """GPED: one loss per distilled posterior expectation (Vadera et al. 2020, section 3).

    ``predictive`` is the BDK term (:func:`bdk_loss`) on the logits head; the expectation heads
    regress E_s[H p_s] (expected data uncertainty) and I = H[pbar] - E_s[H p_s] (knowledge
    uncertainty), the terms of eq. (3) of Vadera et al. (2021), with the absolute error
    (``"l1"``, as the GPED authors' code for the entropy) or the squared error (``"l2"``):

        predictive + data_weight * mean|E[H] - d(x)| + knowledge_weight * mean|I - k(x)|

    Args:
        student_outputs: ``[logits, data, knowledge]`` (a :func:`gped_student`'s outputs).
        ensemble_logits: the members' logits stack, or the members with ``x``.
        temperature: T of the predictive term only (the expectations are taken at T = 1).
        expectation_loss: ``"l1"`` or ``"l2"``.
        return_terms: also return ``{"predictive", "data", "knowledge"}``.

    Example:
        >>> z = np.array([[[2.0, 0.0], [0.0, 2.0]]], "float32")
        >>> loss, terms = gped_loss([np.zeros((1, 2), "float32"), [[0.0]], [[0.0]]], z, return_terms=True)
        >>> round(float(terms["data"]), 4)               # E[H p_s] of two members at (0.88, 0.12)
        0.3653
    """
    if expectation_loss not in ("l1", "l2"):
        raise DistillationError(f"unknown expectation_loss {expectation_loss!r}", "expectation_loss",
                                "use 'l1' (absolute error) or 'l2' (squared error)")
    if not isinstance(student_outputs, list | tuple) or len(student_outputs) != 3:
        raise DistillationError("a GPED student returns [logits, data, knowledge]", "student_outputs",
                                "build the student with gped_student(features, num_classes)")
    temperature = _check_temperature(temperature)
    logits, data, knowledge = student_outputs
    stack = _stack(ensemble_logits, x, member_axis)
    logits = ops.convert_to_tensor(logits)
    _check_classes(logits.shape[-1], stack, "gped_loss")
    targets = UncertaintyHead()(stack)
    terms = {
        "predictive": soft_target_loss(targets["log_probs"], logits, temperature),
        "data": _expectation_error(targets["data"], data, expectation_loss),
        "knowledge": _expectation_error(targets["knowledge"], knowledge, expectation_loss),
    }
    loss = terms["predictive"] + data_weight * terms["data"] + knowledge_weight * terms["knowledge"]
    return (loss, terms) if return_terms else loss


# --------------------------------------------------------------------------- EnD^2


def end2_loss(log_alpha, ensemble_logits, *, x=None, member_axis: int = 1, temperature=1.0,
              smoothing: float = 1e-4):
    """EnD^2: T^2 * mean over inputs of -1/S sum_s log Dir(pi_s | alpha) (Malinin et al. 2020, eq. 7-8).

    alpha = exp(z / T) are the student's concentrations (eq. 7: alpha = exp(z), the model's
    output) and pi_s = softmax(z_s / T) the members' categoricals, pulled towards uniform as
    ``(1 - smoothing) pi_s + smoothing / C`` so that log pi_s stays finite. In closed form

        log Dir(pi | alpha) = lgamma(alpha_0) - sum_c lgamma(alpha_c) + sum_c (alpha_c - 1) log pi_c

    with alpha_0 = sum_c alpha_c, so eq. (8) needs only the members' mean log pi. The
    temperature (default 1: the paper's loss) heats both sides and the T^2 keeps the gradient's
    scale, as in the authors' code; :class:`TemperatureAnnealing` lowers it to 1.

    Args:
        log_alpha: the student's outputs z, ``[batch, classes]``.
        ensemble_logits: the members' logits stack, or the members with ``x``.
        temperature: T (a float or a scalar variable).
        smoothing: the members' probabilities' pull to uniform (0 keeps them as they are).

    Example:
        >>> z = np.zeros((1, 2, 3), "float32")                  # two uniform members
        >>> round(float(end2_loss(np.zeros((1, 3), "float32"), z, smoothing=0.0)), 4)   # -log 2
        -0.6931
    """
    if not 0.0 <= smoothing < 1.0:
        raise DistillationError(f"smoothing must be in [0, 1), got {smoothing}", "smoothing")
    if isinstance(temperature, int | float):
        _check_temperature(temperature)
    stack = _stack(ensemble_logits, x, member_axis)
    log_alpha = ops.cast(ops.convert_to_tensor(log_alpha), "float32")
    _check_classes(log_alpha.shape[-1], stack, "end2_loss")
    return ops.mean(_end2_nll(log_alpha, stack, ops.cast(temperature, "float32"), smoothing))


def _end2_nll(log_alpha, stack, temperature, smoothing: float):
    import tensorflow as tf

    alpha = ops.exp(log_alpha / temperature)
    probs = ops.softmax(stack / temperature, axis=-1)
    classes = int(stack.shape[-1])
    probs = (1.0 - smoothing) * probs + smoothing / classes
    mean_log = ops.mean(ops.log(probs), axis=1)                             # [batch, classes]
    log_norm = tf.math.lgamma(ops.sum(alpha, axis=-1)) - ops.sum(tf.math.lgamma(alpha), axis=-1)
    log_likelihood = log_norm + ops.sum((alpha - 1.0) * mean_log, axis=-1)
    return -log_likelihood * temperature**2


def dirichlet_uncertainty(log_alpha) -> dict:
    """Closed-form uncertainties of Dir(alpha), alpha = exp(z) (Malinin et al. 2020, section 2).

    With alpha_0 = sum_c alpha_c and E[pi] = alpha / alpha_0 = softmax(z):

    - ``total`` = H[E pi];
    - ``data`` = E[H pi] = -sum_c (alpha_c / alpha_0) (psi(alpha_c + 1) - psi(alpha_0 + 1));
    - ``knowledge`` = total - data, the mutual information between y and pi (eq. 3 of Vadera
      et al. 2021 with the Dirichlet in place of the members).

    Exact in float (digamma); :class:`DirichletHead` is the int8-export form.

    Returns:
        ``{probs, log_probs, total, data, knowledge}`` tensors (float32).

    Example:
        >>> out = dirichlet_uncertainty(np.zeros((1, 2), "float32"))     # Dir(1, 1): uniform pi
        >>> round(float(out["total"][0]), 4), round(float(out["data"][0]), 4)
        (0.6931, 0.5)
    """
    import tensorflow as tf

    z = ops.cast(ops.convert_to_tensor(log_alpha), "float32")
    alpha = ops.exp(z)
    alpha0 = ops.sum(alpha, axis=-1, keepdims=True)
    probs, log_probs = ops.softmax(z, axis=-1), ops.log_softmax(z, axis=-1)
    total = -ops.sum(probs * log_probs, axis=-1)
    data = -ops.sum(probs * (tf.math.digamma(alpha + 1.0) - tf.math.digamma(alpha0 + 1.0)), axis=-1)
    return {"probs": probs, "log_probs": log_probs, "total": total, "data": data, "knowledge": total - data}


# --------------------------------------------------------------------------- distillers


class _StudentDistiller(keras.Model):
    """A student trained on a frozen ensemble's logits (computed on each batch's inputs) or, with
    no teacher, on the precomputed ``[batch, S, classes]`` stack given as ``y``."""

    def __init__(self, student: keras.Model, teacher: Any = None, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.teacher = _teacher_logits_model(teacher)
        if self.teacher is not None:
            self.teacher.trainable = False
        # built models: a reloaded .keras file restores the optimizer state (see Distiller)
        self.built = bool(student.built and (self.teacher is None or self.teacher.built))

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def teacher_logits(self, x, y=None):
        """The ensemble's ``[batch, S, classes]`` logits for this batch."""
        if self.teacher is not None:
            return ops.cast(self.teacher(x, training=False), "float32")
        if y is None:
            raise DistillationError("no teacher and no precomputed logits", self.name,
                                    "pass teacher=members, or fit(x, logits_stack) with the stack as y")
        return ops.cast(y, "float32")

    def distillation_loss(self, stack, y_pred):
        raise NotImplementedError

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # y and sample_weight are labels' (transfer_dataset); the ensemble supervises every row
        loss = self.distillation_loss(self.teacher_logits(x, y), y_pred)
        return sum((ops.sum(ops.cast(extra, "float32")) for extra in self.losses), loss)

    def get_config(self) -> dict:
        teacher = None
        if self.teacher is not None:
            teacher = keras.saving.serialize_keras_object(self.teacher)
            teacher.pop("compile_config", None)
        return {**super().get_config(), "student": keras.saving.serialize_keras_object(self.student),
                "teacher": teacher}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfcompress")
class PosteriorExpectationDistiller(_StudentDistiller):
    """GPED: a :func:`gped_student` trained on :func:`gped_loss` (Vadera et al. 2020, section 3).

    Args:
        student: ``x -> [logits, data, knowledge]``.
        teacher: the members, a Posterior or a stacking model; None to ``fit(x, stack)``.
        temperature: T of the predictive term.
        expectation_loss, data_weight, knowledge_weight: as in :func:`gped_loss`.

    Example:
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
        >>> body = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
        >>> distiller = PosteriorExpectationDistiller(gped_student(body, 3), members)
        >>> distiller.compile("adam")
        >>> _ = distiller.fit(transfer_dataset(np.zeros((8, 4), "float32")), epochs=1, verbose=0)  # doctest: +SKIP
        >>> x = np.zeros((2, 4), "float32")
        >>> float(distiller.compute_loss(x, y_pred=distiller(x))) > 0
        True
    """

    def __init__(self, student: keras.Model, teacher: Any = None, temperature: float = 1.0,
                 expectation_loss: str = "l1", data_weight: float = 1.0, knowledge_weight: float = 1.0, **kwargs):
        if len(getattr(student, "outputs", None) or []) != 3:
            raise DistillationError("a GPED student returns [logits, data, knowledge]",
                                    getattr(student, "name", "student"),
                                    "build it with gped_student(features, num_classes)")
        if expectation_loss not in ("l1", "l2"):
            raise DistillationError(f"unknown expectation_loss {expectation_loss!r}", "expectation_loss",
                                    "use 'l1' or 'l2'")
        super().__init__(student, teacher, **kwargs)
        self.temperature = _check_temperature(temperature)
        self.expectation_loss = expectation_loss
        self.data_weight, self.knowledge_weight = float(data_weight), float(knowledge_weight)
        self._head = UncertaintyHead(name="targets")

    def distillation_loss(self, stack, y_pred):
        logits, data, knowledge = y_pred
        _check_classes(logits.shape[-1], stack, self.name)
        targets = self._head(stack)
        return (soft_target_loss(targets["log_probs"], logits, self.temperature)
                + self.data_weight * _expectation_error(targets["data"], data, self.expectation_loss)
                + self.knowledge_weight * _expectation_error(targets["knowledge"], knowledge, self.expectation_loss))

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature, "expectation_loss": self.expectation_loss,
                "data_weight": self.data_weight, "knowledge_weight": self.knowledge_weight}


@keras.saving.register_keras_serializable(package="tfcompress")
class EnsembleDistributionDistiller(_StudentDistiller):
    """EnD^2: a student ``x -> z`` (log-concentrations) trained on :func:`end2_loss` (Malinin et al. 2020).

    The temperature is a variable (:meth:`set_temperature`, :class:`TemperatureAnnealing`),
    saved with the model, so an annealing run resumes where it stopped.

    Args:
        student: ``x -> [batch, classes]``; its outputs are log alpha (softmax of them is the
            predictive mean alpha / alpha_0).
        teacher: the members, a Posterior or a stacking model; None to ``fit(x, stack)``.
        temperature: the initial T.
        smoothing: the members' probabilities' pull to uniform (:func:`end2_loss`).

    Example:
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> distiller = EnsembleDistributionDistiller(student, members, temperature=2.5)
        >>> distiller.compile("adam")
        >>> annealing = TemperatureAnnealing(2.5, hold_epochs=0, decay_epochs=1)
        >>> _ = distiller.fit(np.zeros((8, 4), "float32"), epochs=2, callbacks=[annealing])  # doctest: +SKIP
        >>> x = np.zeros((2, 4), "float32")
        >>> distiller.temperature, bool(np.isfinite(float(distiller.compute_loss(x, y_pred=distiller(x)))))
        (2.5, True)
        >>> annealing.value(1)                  # the temperature of the second epoch
        1.0
    """

    def __init__(self, student: keras.Model, teacher: Any = None, temperature: float = 1.0,
                 smoothing: float = 1e-4, **kwargs):
        if not 0.0 <= smoothing < 1.0:
            raise DistillationError(f"smoothing must be in [0, 1), got {smoothing}", "smoothing")
        super().__init__(student, teacher, **kwargs)
        self.initial_temperature = _check_temperature(temperature)
        self.smoothing = float(smoothing)
        self._temperature = self.add_weight(name="temperature", shape=(), trainable=False,
                                            initializer=keras.initializers.Constant(self.initial_temperature))

    @property
    def temperature(self) -> float:
        return float(ops.convert_to_numpy(self._temperature))

    def set_temperature(self, value: float) -> None:
        """Set T (:class:`TemperatureAnnealing` does, each epoch; the compiled step reads the variable)."""
        self._temperature.assign(_check_temperature(value))

    def distillation_loss(self, stack, y_pred):
        _check_classes(y_pred.shape[-1], stack, self.name)
        return ops.mean(_end2_nll(ops.cast(y_pred, "float32"), stack, self._temperature, self.smoothing))

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.initial_temperature, "smoothing": self.smoothing}


@keras.saving.register_keras_serializable(package="tfcompress")
class TemperatureAnnealing(keras.callbacks.Callback):
    """EnD^2's temperature schedule: T = ``initial`` up to epoch ``hold_epochs``, then linear to ``final``.

    Malinin et al. (2020) heat the members and the student (:func:`end2_loss`) to ease the
    start of training and anneal T to 1; the authors' code holds T, then lowers it linearly, to
    reach ``final`` at epoch ``hold_epochs + decay_epochs``. T is set at each epoch's start
    and logged as ``temperature``; the model needs ``set_temperature``
    (:class:`EnsembleDistributionDistiller`).

    The student's alpha = exp(z / T) becomes alpha^T as T falls to 1, so the student must keep
    training while T drops: measured on the tests' 3-MLP ensemble, T = 3 -> 1 over 4 epochs of
    10 steps left eq. (8) at T = 1 worse than before training (0.91 -> 2.91), while T = 2 -> 1
    over 2 epochs and 2 more at T = 1 brought it to -3.9. Anneal over many epochs.

    Example:
        >>> [TemperatureAnnealing(10.0, hold_epochs=1, decay_epochs=3).value(e) for e in range(5)]
        [10.0, 10.0, 7.0, 4.0, 1.0]
    """

    def __init__(self, initial: float, final: float = 1.0, hold_epochs: int = 0, decay_epochs: int = 1):
        super().__init__()
        self.initial = _check_temperature(initial, "initial")
        self.final = _check_temperature(final, "final")
        if int(hold_epochs) < 0 or int(decay_epochs) < 1:
            raise DistillationError(f"hold_epochs must be >= 0 and decay_epochs >= 1, got {hold_epochs}, "
                                    f"{decay_epochs}", "TemperatureAnnealing")
        self.hold_epochs, self.decay_epochs = int(hold_epochs), int(decay_epochs)

    def value(self, epoch: int) -> float:
        """T at the start of ``epoch`` (0-based)."""
        progress = min(max((epoch - self.hold_epochs) / self.decay_epochs, 0.0), 1.0)
        return float(self.initial + (self.final - self.initial) * progress)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not hasattr(self.model, "set_temperature"):
            raise DistillationError("TemperatureAnnealing needs a model with set_temperature", self.model.name,
                                    "use it with EnsembleDistributionDistiller")
        self.model.set_temperature(self.value(epoch))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["temperature"] = self.model.temperature

    def get_config(self) -> dict[str, Any]:
        return {"initial": self.initial, "final": self.final, "hold_epochs": self.hold_epochs,
                "decay_epochs": self.decay_epochs}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TemperatureAnnealing:
        return cls(**config)


# --------------------------------------------------------------------------- transfer data


def transfer_dataset(x, y=None, *, aux_x=None, noise_std: float = 0.0, batch_size: int = 32,
                     shuffle: bool = True, seed: int = 0):
    """The inputs a student is distilled on: ``(x, label, label_weight)`` batches.

    Balan et al. (2015, section 3) and the GPED authors distil on training inputs perturbed by
    Gaussian noise, drawn afresh each epoch (``noise_std``); EnD^2 adds an auxiliary set
    (``aux_x``, e.g. out-of-distribution images) on which the ensemble is diverse (Malinin et
    al. 2020, section 5). Rows without a label (all of them when ``y`` is None, and ``aux_x``)
    have label 0 and weight 0: a hard-label loss ignores them, the distillation term does not.

    Example:
        >>> data = transfer_dataset(np.zeros((3, 2), "float32"), [1, 0, 1], aux_x=np.ones((1, 2), "float32"),
        ...                         shuffle=False, batch_size=4)
        >>> [v.numpy().tolist() for v in next(iter(data))[1:]]
        [[1, 0, 1, 0], [1.0, 1.0, 1.0, 0.0]]
    """
    import tensorflow as tf

    x = np.asarray(x, dtype=np.float32)
    if y is None:
        labels, weights = np.zeros(len(x), np.int64), np.zeros(len(x), np.float32)
    else:
        labels, weights = np.asarray(y), np.ones(len(x), np.float32)
        if len(labels) != len(x):
            raise DistillationError(f"{len(x)} inputs and {len(labels)} labels", "transfer_dataset",
                                    "give one label per input")
    if aux_x is not None:
        aux_x = np.asarray(aux_x, dtype=np.float32)
        if aux_x.shape[1:] != x.shape[1:]:
            raise DistillationError(f"aux_x has shape {aux_x.shape[1:]} per input, x {x.shape[1:]}", "aux_x",
                                    "give auxiliary inputs of the model's input shape")
        x = np.concatenate([x, aux_x])
        labels = np.concatenate([labels, np.zeros((len(aux_x), *labels.shape[1:]), labels.dtype)])
        weights = np.concatenate([weights, np.zeros(len(aux_x), np.float32)])
    if not noise_std >= 0:
        raise DistillationError(f"noise_std must be >= 0, got {noise_std}", "noise_std")
    data = tf.data.Dataset.from_tensor_slices((x, labels, weights))
    if shuffle:
        data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(int(batch_size))
    if noise_std > 0:
        generator = tf.random.Generator.from_seed(seed)

        def perturb(inputs, label, weight):
            return inputs + generator.normal(tf.shape(inputs), stddev=noise_std), label, weight

        data = data.map(perturb)
    return data.prefetch(2)


# --------------------------------------------------------------------------- int8 export


def _sum_classes(x, classes: int):
    return UncertaintyHead._sum_classes(x, classes)


def _entropy_terms(logits, classes: int):
    probs, log_probs = ops.softmax(logits, axis=-1), ops.log_softmax(logits, axis=-1)
    return probs, log_probs, _sum_classes(probs * ops.subtract(0.0, log_probs), classes)


@keras.saving.register_keras_serializable(package="tfcompress")
class DirichletHead(keras.layers.Layer):
    """EnD^2 log-concentrations z -> {probs, log_probs, total, data, knowledge} in int8 builtins.

    The exact closed form (:func:`dirichlet_uncertainty`) needs EXP and digamma, which int8
    TFLite Micro lacks. With L = log alpha_0 and g(u) = psi(e^u + 1) - u it rewrites exactly as

        total = -sum_c p_c log p_c,   L = sum_c p_c (z_c - log p_c),
        knowledge = sum_c p_c g(z_c) - g(L),   data = total - knowledge

    (z_c - log p_c = L for every class; the p-weighting keeps L right when int8 LOG_SOFTMAX
    saturates at -16 on unlikely classes). g is the only approximation:
    g(u) ~ softplus(-u - ln 2) + (ln 2 - gamma) sigmoid(-1.225 (u + 1.3754)), from
    psi(x + 1) ~ log(x + 1/2) plus a fitted correction of its tail, |error| <= 0.0021 for every
    u (so |knowledge error| <= 0.0042 in float); softplus(t) is -log_softmax([t, 0])[0]. So
    every op is SOFTMAX, LOG_SOFTMAX, LOGISTIC, MUL, ADD, SUB, CONCATENATION, FULLY_CONNECTED
    (the sums, as in :class:`UncertaintyHead`) or RELU (knowledge >= 0). ``log_precision=True``
    also returns L, the concentration score EnD^2 uses for out-of-distribution detection.

    Example:
        >>> out = DirichletHead()(np.zeros((1, 2), "float32"))     # Dir(1, 1)
        >>> round(float(out["total"][0]), 4), round(float(out["data"][0]), 2)
        (0.6931, 0.5)
    """

    def __init__(self, log_precision: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.log_precision = bool(log_precision)

    @staticmethod
    def digamma_gap(u):
        """g(u) ~ psi(e^u + 1) - u, elementwise, in int8 builtins (|error| <= 0.0021)."""
        shifted = ops.expand_dims(u + _LN2, -1)
        pair = ops.concatenate([shifted, ops.zeros_like(shifted)], axis=-1)
        softplus = ops.subtract(0.0, ops.log_softmax(pair, axis=-1)[..., 0])     # softplus(-u - ln 2)
        return softplus + _TAIL * ops.sigmoid(-_GAP_SLOPE * (u + _GAP_SHIFT))

    def call(self, log_alpha):
        classes = log_alpha.shape[-1]
        probs, log_probs, total = _entropy_terms(log_alpha, classes)
        log_precision = _sum_classes(probs * (log_alpha - log_probs), classes)
        knowledge = ops.relu(_sum_classes(probs * self.digamma_gap(log_alpha), classes)
                             - self.digamma_gap(log_precision))
        out = {"probs": probs, "log_probs": log_probs, "total": total, "data": total - knowledge,
               "knowledge": knowledge}
        if self.log_precision:
            out["log_precision"] = log_precision
        return out

    def compute_output_spec(self, log_alpha):
        batch, classes = log_alpha.shape[0], log_alpha.shape[-1]
        out = {name: keras.KerasTensor((batch, classes) if name in ("probs", "log_probs") else (batch,))
               for name in OUTPUT_NAMES}
        if self.log_precision:
            out["log_precision"] = keras.KerasTensor((batch,))
        return out

    def get_config(self) -> dict:
        return {**super().get_config(), "log_precision": self.log_precision}


@keras.saving.register_keras_serializable(package="tfcompress")
class ExpectationHead(keras.layers.Layer):
    """GPED heads [logits, data, knowledge] -> {probs, log_probs, total, data, knowledge}.

    probs = softmax(logits) is the distilled predictive (eq. 4 of Vadera et al. 2021), total its
    entropy H[probs]; data and knowledge are the student's own heads (E[H p] and I of eq. 3),
    which GPED distils separately, so total = data + knowledge only as far as the student
    learned it. Ops: SOFTMAX, LOG_SOFTMAX, MUL, SUB, FULLY_CONNECTED, RESHAPE.

    Example:
        >>> heads = [np.zeros((1, 2), "float32"), np.array([[0.1]], "float32"), np.array([[0.2]], "float32")]
        >>> out = ExpectationHead()(heads)
        >>> round(float(out["total"][0]), 4), round(float(out["knowledge"][0]), 4)
        (0.6931, 0.2)
    """

    def call(self, inputs):
        logits, data, knowledge = inputs
        probs, log_probs, total = _entropy_terms(logits, logits.shape[-1])
        return {"probs": probs, "log_probs": log_probs, "total": total,
                "data": ops.reshape(data, (-1,)), "knowledge": ops.reshape(knowledge, (-1,))}

    def compute_output_spec(self, inputs):
        logits = inputs[0]
        batch, classes = logits.shape[0], logits.shape[-1]
        return {name: keras.KerasTensor((batch, classes) if name in ("probs", "log_probs") else (batch,))
                for name in OUTPUT_NAMES}


def uncertainty_model(student: keras.Model, kind: str, *, log_precision: bool = False,
                      name: str | None = None) -> keras.Model:
    """``x -> {probs, log_probs, total, data, knowledge}`` from a distilled student, for int8 export.

    Args:
        student: an EnD^2 student (``x -> log alpha``) or a :func:`gped_student`.
        kind: ``"end2"`` (:class:`DirichletHead`) or ``"gped"`` (:class:`ExpectationHead`).
        log_precision: EnD^2 only: also output log alpha_0.

    Returns:
        A Functional model whose outputs have :data:`~tfcompress.uncertainty.OUTPUT_NAMES`;
        ``tfcompress.export.to_tflite(model, path, "int8", x)`` compiles it to int8 builtins.

    Example:
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> sorted(uncertainty_model(student, "end2").output)
        ['data', 'knowledge', 'log_probs', 'probs', 'total']
    """
    if kind not in ("end2", "gped"):
        raise DistillationError(f"unknown kind {kind!r}", "kind", "use 'end2' (log-concentrations) or 'gped'")
    if not getattr(student, "inputs", None):
        raise DistillationError("the student is not a built Functional / Sequential model",
                                getattr(student, "name", "student"), "build it with keras.Input")
    inputs = student.inputs[0] if len(student.inputs) == 1 else student.inputs
    outputs = student.outputs
    if kind == "gped":
        if len(outputs) != 3:
            raise DistillationError(f"a GPED student has 3 outputs, this one {len(outputs)}", student.name,
                                    "build it with gped_student(features, num_classes)")
        head = ExpectationHead(name="uncertainty")(list(outputs))
    else:
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            raise DistillationError("an EnD^2 student has one [batch, classes] output", student.name,
                                    "return the log-concentrations z (alpha = exp(z))")
        head = DirichletHead(log_precision, name="uncertainty")(outputs[0])
    return keras.Model(inputs, head, name=name or f"{student.name}_uncertainty")


# --------------------------------------------------------------------------- architecture search


@keras.saving.register_keras_serializable(package="tfcompress")
class StudentPruning(UpdatePruning):
    """:class:`~tfcompress.callbacks.UpdatePruning` on a distiller's ``student``.

    Kept for existing code: ``UpdatePruning`` itself now finds the one Functional / Sequential
    model inside a subclassed distiller that holds the pruned layers.

    Example:
        >>> import keras
        >>> from tfcompress.distillation import Distiller
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers
        >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> student = prune(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]),
        ...                 ConstantSparsity(0.5, begin_step=0, frequency=1), verbose=0)
        >>> distiller = Distiller(student, teacher)
        >>> distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> x, y = np.ones((8, 4), "float32"), np.zeros(8, "int32")
        >>> _ = distiller.fit(x, y, epochs=1, verbose=0, callbacks=[StudentPruning()])
        >>> round(mask_sparsity(pruning_wrappers(student)), 2)
        0.5
    """

    def set_model(self, model) -> None:
        super().set_model(getattr(model, "student", model))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StudentPruning:
        return cls(**config)


@dataclass
class ParetoPoint:
    """One distilled student: its sparsity, cost and validation scores.

    Example:
        >>> point = ParetoPoint(sparsity=0.5, params=120, macs=100, nll=0.41, accuracy=0.9)
        >>> point.to_dict()
        {'sparsity': 0.5, 'params': 120, 'macs': 100, 'nll': 0.41, 'accuracy': 0.9}
    """

    sparsity: float
    params: int
    macs: int
    nll: float
    accuracy: float
    model: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("model")
        return out


@dataclass
class ParetoResult:
    """The students of :func:`distillation_pareto`, in the order distilled.

    Example:
        >>> result = ParetoResult([ParetoPoint(0.0, 100, 90, 0.30, 0.9), ParetoPoint(0.5, 60, 50, 0.35, 0.9),
        ...                        ParetoPoint(0.7, 70, 40, 0.40, 0.8)])
        >>> [p.sparsity for p in result.front("params")], [p.sparsity for p in result.front("macs")]
        ([0.0, 0.5], [0.0, 0.5, 0.7])
    """

    points: list[ParetoPoint]
    ensemble_nll: float | None = None

    def front(self, cost: str = "params") -> list[ParetoPoint]:
        """The points no other point beats on both ``cost`` (``"params"`` / ``"macs"``) and NLL."""
        if cost not in ("params", "macs"):
            raise DistillationError(f"unknown cost {cost!r}", "front", "use 'params' or 'macs'")

        def beats(a: ParetoPoint, b: ParetoPoint) -> bool:
            ca, cb = getattr(a, cost), getattr(b, cost)
            return ca <= cb and a.nll <= b.nll and (ca < cb or a.nll < b.nll)

        kept = [p for p in self.points if not any(beats(q, p) for q in self.points if q is not p)]
        return sorted(kept, key=lambda p: getattr(p, cost), reverse=True)

    def to_dict(self) -> dict:
        return {"points": [p.to_dict() for p in self.points], "ensemble_nll": self.ensemble_nll,
                "front": {cost: [p.sparsity for p in self.front(cost)] for cost in ("params", "macs")}}


def _first_output(model: keras.Model, x, batch_size: int = 256) -> np.ndarray:
    """The model's first output on ``x`` in float64 (direct calls: no predict function to trace)."""
    chunks = []
    for start in range(0, len(x), batch_size):
        out = model(x[start:start + batch_size], training=False)
        chunks.append(np.asarray(out[0] if isinstance(out, list | tuple) else out, dtype=np.float64))
    return np.concatenate(chunks)


def _copy(model: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def distillation_pareto(student: keras.Model, make_distiller: Callable[[keras.Model], keras.Model], train: Any,
                        validation: tuple, sparsities, *, epochs: int = 1, frequency: int = 100,
                        members: Any = None, batch_size: int | None = None, verbose: int = 0) -> ParetoResult:
    """Search the student's architecture by channel pruning: distil at each sparsity, keep the front.

    Vadera et al. (2021, section 4) and the GPED paper (Vadera et al. 2020, section 5): start
    from a large student and prune it iteratively, distilling after each cut, so every level
    is an architecture with its own storage / compute and posterior-approximation quality. Level
    k continues from level k-1's shrunk student, pruned by ``tfcompress.prune(granularity=
    "channel")`` by the fraction that removes about ``sparsities[k]`` of every pruned layer's
    original channels (rounded per layer), distilled for ``epochs`` with the masks kept by ``UpdatePruning``, then
    made small for real by ``tfcompress.shrink`` (a sparsity of 0 distils the dense student).

    Args:
        student: the large student (copied, not changed).
        make_distiller: ``student -> compiled distiller`` (a Distiller from
            :func:`bayesian_dark_knowledge`, a :class:`PosteriorExpectationDistiller`, an
            :class:`EnsembleDistributionDistiller`); it must keep the student as ``.student``.
        train: what ``fit`` takes: a ``tf.data.Dataset`` or a tuple ``(x, y[, w])``.
        validation: ``(x_val, y_val)`` labels; NLL of the student's predictive
            (softmax of its first output) and accuracy are measured on it.
        sparsities: increasing fractions in [0, 1) of channels removed per pruned layer.
        epochs: distillation epochs per level.
        frequency: pruning steps between mask updates (``ConstantSparsity``).
        members: optional ensemble, for its own validation NLL (the target).
        batch_size: for ``fit`` on arrays.

    Returns:
        A :class:`ParetoResult`; ``.points[k].model`` is the shrunk student of level k.

    Example:
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
        >>> body = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
        >>> def make(s):
        ...     d = EnsembleDistributionDistiller(s, members)
        ...     d.compile("adam")
        ...     return d
        >>> x, y = np.zeros((8, 4), "float32"), np.zeros(8, "int64")
        >>> student = keras.Sequential([body, keras.layers.Dense(3)])
        >>> result = distillation_pareto(student, make, (x,), (x, y), [0.0, 0.5])     # doctest: +SKIP
        >>> [p.params for p in result.points]                                       # doctest: +SKIP
        [67, 35]
    """
    from tfcompress.metrics import summarize
    from tfcompress.pruning import ConstantSparsity, prune
    from tfcompress.pruning.surgery import shrink
    from tfcompress.uncertainty.metrics import accuracy, negative_log_likelihood

    levels = [float(s) for s in sparsities]
    if not levels or any(not 0.0 <= s < 1.0 for s in levels) or any(b <= a for a, b in zip(levels[:-1], levels[1:], strict=True)):
        raise DistillationError(f"sparsities must be increasing fractions in [0, 1), got {list(sparsities)}",
                                "sparsities", "e.g. [0.0, 0.5, 0.75, 0.9]")
    x_val, y_val = validation
    fit_args = train if isinstance(train, tuple) else (train,)
    current, previous, points = _copy(student), 0.0, []
    for level in levels:
        relative = 1.0 - (1.0 - level) / (1.0 - previous)
        callbacks = []
        if relative > 1e-9:
            current = prune(current, ConstantSparsity(relative, begin_step=0, frequency=frequency),
                            granularity="channel")
            callbacks.append(StudentPruning())
        distiller = make_distiller(current)
        if getattr(distiller, "student", None) is not current:
            raise DistillationError("make_distiller must return a distiller whose .student is the model it was given",
                                    "make_distiller", "return e.g. EnsembleDistributionDistiller(student, members)")
        distiller.fit(*fit_args, epochs=epochs, batch_size=batch_size, callbacks=callbacks, verbose=verbose,
                      shuffle=not hasattr(fit_args[0], "element_spec"))    # a tf.data pipeline shuffles itself
        current = shrink(distiller.student)
        summary = summarize(current)
        probs = decompose(_first_output(current, x_val)[:, None, :])["probs"]       # softmax, float64
        points.append(ParetoPoint(level, int(summary.params), int(summary.macs),
                                  negative_log_likelihood(probs, y_val), accuracy(probs, y_val), current))
        previous = level
    reference = None
    if members is not None:
        stack = _first_output(_teacher_logits_model(members, "members"), x_val)
        reference = negative_log_likelihood(decompose(stack)["probs"], y_val)
    return ParetoResult(points, reference)
