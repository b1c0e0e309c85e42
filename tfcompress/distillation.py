"""Knowledge distillation: train a small (pruned, shrunk, hashed, quantized) model on a teacher's
soft targets.

Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network", section 2: the
student minimizes

    alpha * CE(y, softmax(z_s)) + (1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

where z_s, z_t are the student's and teacher's logits and T the temperature. The T^2 factor keeps
the soft term's gradient magnitude independent of T (the paper's closing remark of section 2).
Chen et al. 2015 (HashedNets) train hashed networks this way in their experiments ("HashNet_DK"); after
``tfcompress.shrink`` it is the usual fine-tuning step that recovers the accuracy pruning cost.

    distiller = tfcompress.distillation.Distiller(student=small, teacher=dense, temperature=4.0)
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(x, y, epochs=...)
    small = distiller.student          # an ordinary Keras model, ready for to_tflite

The compiled loss is the hard-label term; it also carries the student's ``add_loss`` terms (KL
of a Bayesian student, regularizers), so a Bayesian model can be distilled as it is pruned.
The teacher never trains (it is frozen and called with ``training=False``).

Hints (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", section 2.2, eq. 3) add a term on
intermediate features: a student layer (the guided layer) is regressed onto a teacher layer (the
hint) through a small trainable regressor r, a 1x1 convolution for feature maps and a dense layer
for vectors:

    hint_weight * 1/2 * mean((u_hint(x) - r(v_guided(x)))^2)

FitNets sums the squared error; the mean here (over batch, positions and channels) keeps the term's
scale independent of the layer's size. FitNets trains on the hints in a first stage and then by
distillation; here both terms are minimized together, as in later benchmarks of feature
distillation (Tian et al. 2020, "Contrastive Representation Distillation", FitNet+KD). The
regressors belong to the distiller, never to the student, so ``distiller.student`` stays the
model that is exported:

    Distiller(small, dense, hints={"conv2": "conv2"}, hint_weight=1.0)

A pruned student's layers keep their names after ``tfcompress.shrink``, so the guided layer and
its hint are usually the same name. Both models must be functional (or ``Sequential`` with an
``Input``) so that an inner layer's output can be tapped.
"""

from __future__ import annotations

import keras
from keras import ops


def soft_target_loss(teacher_output, student_output, temperature: float, from_logits: bool = True):
    """Mean over the batch of T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) (Hinton et al. 2015, sec. 2).

    With ``from_logits=False`` the outputs are probabilities; their logs are logits up to a
    per-row constant, which softmax ignores.

    Example:
        >>> import numpy as np
        >>> teacher = np.array([[2.0, 0.0]], "float32")
        >>> round(float(soft_target_loss(teacher, teacher, temperature=4.0)), 6)     # same logits: no loss
        0.0
        >>> round(float(soft_target_loss(teacher, np.zeros((1, 2), "float32"), temperature=1.0)), 4)
        0.3278
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not from_logits:
        teacher_output = ops.log(ops.clip(teacher_output, 1e-12, 1.0))
        student_output = ops.log(ops.clip(student_output, 1e-12, 1.0))
    teacher_log_p = ops.log_softmax(ops.cast(teacher_output, "float32") / temperature, axis=-1)
    student_log_p = ops.log_softmax(ops.cast(student_output, "float32") / temperature, axis=-1)
    kl = ops.sum(ops.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
    return temperature**2 * ops.mean(kl)


def _output_shape(model) -> tuple | None:
    """A model's output shape, or None while it has never been called (a Sequential without Input)."""
    try:
        return tuple(model.output.shape)
    except (AttributeError, ValueError):
        return None


def _symbolic_input(model: keras.Model):
    """The model's symbolic input: its one input tensor (``model.input`` fails on a Sequential that was
    built from ``keras.Input`` but never called), or the list of them."""
    inputs = model.inputs
    return inputs[0] if len(inputs) == 1 else inputs


@keras.saving.register_keras_serializable(package="tfcompress")
class Distiller(keras.Model):
    """A student trained on labels and on a frozen teacher's soft targets (Hinton et al. 2015).

    Args:
        student: the model that trains; ``Distiller(x)`` is ``student(x)``, so metrics and
            ``predict`` are the student's.
        teacher: a trained model with the same output shape; frozen here.
        temperature: T of the soft targets (Hinton et al. use 1-20; 2-8 is typical for 10 classes).
        alpha: weight of the hard-label loss (the compiled loss); ``1 - alpha`` weights the soft term.
        from_logits: whether both models output logits (True) or probabilities.
        hints: ``{student layer name: teacher layer name}``: FitNets hints (Romero et al. 2015, eq. 3),
            each student layer's output regressed onto the teacher layer's output. Outputs must
            agree in every dimension but the last (channels).
        hint_weight: weight of the mean hint term, added to the distillation loss.

    Example:
        >>> import numpy as np
        >>> keras.utils.set_random_seed(0)
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> y = (x[:, 0] > 0).astype("int32")
        >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
        ...                             keras.layers.Dense(2)])
        >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
        >>> distiller = Distiller(student, teacher, temperature=4.0, alpha=0.1)
        >>> distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> history = distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
        >>> len(history.history["loss"]), distiller.student is student, teacher.trainable
        (2, True, False)
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float = 4.0, alpha: float = 0.1,
                 from_logits: bool = True, hints: dict[str, str] | None = None, hint_weight: float = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}: it weights the hard-label loss against "
                             "the soft targets")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        student_shape, teacher_shape = _output_shape(student), _output_shape(teacher)
        if student_shape and teacher_shape and student_shape[1:] != teacher_shape[1:]:
            raise ValueError(f"the student's output shape {student_shape} differs from the teacher's "
                             f"{teacher_shape}: distillation needs the same classes")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.from_logits = bool(from_logits)
        self.hints = {str(k): str(v) for k, v in (hints or {}).items()}
        self.hint_weight = float(hint_weight)
        if hint_weight < 0:
            raise ValueError(f"hint_weight must be >= 0, got {hint_weight}")
        self.regressors = []
        if self.hints:
            self._student_taps, self._teacher_taps = self._tap_hints(student, teacher)
        # both models are built: so is the distiller, which lets a reloaded .keras file restore
        # its optimizer state (Keras builds the optimizer of built models only)
        self.built = bool(student.built and teacher.built)

    def _tap_hints(self, student: keras.Model, teacher: keras.Model) -> tuple[keras.Model, keras.Model]:
        """Models returning the guided student features, and the teacher's logits with its hints; one
        regressor per hint, built at once (a reloaded distiller then restores its weights)."""
        student_outputs, teacher_outputs = [], []
        for guided_name, hint_name in self.hints.items():
            for model, name, role, into in ((student, guided_name, "student", student_outputs),
                                            (teacher, hint_name, "teacher", teacher_outputs)):
                try:
                    into.append(model.get_layer(name).output)
                except ValueError:
                    names = [layer.name for layer in model.layers]
                    raise ValueError(f"hints: the {role} has no layer {name!r}; its layers are {names}") from None
                except (AttributeError, RuntimeError):
                    raise ValueError(f"hints: the {role}'s layer {name!r} has no symbolic output; hints need a "
                                     "functional model or a Sequential that starts with keras.Input") from None
            guided, hint = student_outputs[-1].shape, teacher_outputs[-1].shape
            if tuple(guided[1:-1]) != tuple(hint[1:-1]) or len(guided) not in (2, 4):
                raise ValueError(f"hints: student layer {guided_name!r} outputs {tuple(guided)} and teacher layer "
                                 f"{hint_name!r} outputs {tuple(hint)}: they must be vectors or feature maps "
                                 "of the same spatial size (only the channels may differ)")
            regressor = (keras.layers.Conv2D(hint[-1], 1, name=f"regressor_{guided_name}") if len(guided) == 4
                         else keras.layers.Dense(hint[-1], name=f"regressor_{guided_name}"))
            regressor.build(tuple(guided))
            self.regressors.append(regressor)
        return (keras.Model(_symbolic_input(student), student_outputs, name="student_taps"),
                keras.Model(_symbolic_input(teacher), [teacher.outputs[0], *teacher_outputs], name="teacher_taps"))

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def hint_loss(self, x, training=False):
        """The mean over hints of 1/2 * mean((teacher hint - regressor(student feature))^2)
        (FitNets eq. 3), unweighted; 0 without hints."""
        if not self.hints:
            return ops.zeros(())
        return self._hint_term(x, self._teacher_taps(x, training=False)[1:], training)

    def _hint_term(self, x, hints, training):
        guided = self._student_taps(x, training=training)
        guided = guided if isinstance(guided, (list, tuple)) else [guided]
        terms = [0.5 * ops.mean(ops.square(ops.cast(hint, "float32") - regressor(ops.cast(feature, "float32"))))
                 for regressor, feature, hint in zip(self.regressors, guided, hints, strict=True)]
        return sum(terms[1:], terms[0]) / len(terms)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # the compiled loss plus the student's add_loss terms; read them before the teacher runs
        total = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if self.alpha == 1.0 and not self.hints:
            return total
        # only the hard-label term is weighted by alpha: a Bayesian student's KL keeps its weight
        additional = sum((ops.sum(ops.cast(loss, "float32")) for loss in self.losses), ops.zeros(()))
        if self.hints:
            # one teacher pass gives the logits and the hints; the guided features take a second
            # (small) student pass, after its add_loss terms were read above
            teacher_logits, *hints = self._teacher_taps(x, training=False)
            hint = self.hint_weight * self._hint_term(x, hints, training)
        else:
            teacher_logits, hint = self.teacher(x, training=False), 0.0
        soft = soft_target_loss(teacher_logits, y_pred, self.temperature, self.from_logits)
        return self.alpha * total + (1.0 - self.alpha) * (soft + additional) + hint

    def get_config(self) -> dict:
        teacher = keras.saving.serialize_keras_object(self.teacher)
        # the teacher never trains here: its own optimizer (from its training) is not restored
        teacher.pop("compile_config", None)
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": teacher,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "from_logits": self.from_logits,
            "hints": dict(self.hints),
            "hint_weight": self.hint_weight,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
