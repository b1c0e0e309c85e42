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
"""

from __future__ import annotations

import keras
from keras import ops


def soft_target_loss(teacher_output, student_output, temperature: float, from_logits: bool = True):
    """Mean over the batch of T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) (Hinton et al. 2015, sec. 2).

    With ``from_logits=False`` the outputs are probabilities; their logs are logits up to a
    per-row constant, which softmax ignores.
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
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float = 4.0, alpha: float = 0.1,
                 from_logits: bool = True, **kwargs):
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
        # both models are built: so is the distiller, which lets a reloaded .keras file restore
        # its optimizer state (Keras builds the optimizer of built models only)
        self.built = bool(student.built and teacher.built)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # the compiled loss plus the student's add_loss terms; read them before the teacher runs
        total = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if self.alpha == 1.0:
            return total
        # only the hard-label term is weighted by alpha: a Bayesian student's KL keeps its weight
        additional = sum((ops.sum(ops.cast(loss, "float32")) for loss in self.losses), ops.zeros(()))
        soft = soft_target_loss(self.teacher(x, training=False), y_pred, self.temperature, self.from_logits)
        return self.alpha * total + (1.0 - self.alpha) * (soft + additional)

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
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
