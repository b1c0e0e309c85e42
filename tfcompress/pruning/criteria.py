"""Data-driven pruning criteria: activations, gradients, second order; and pruning at initialization.

Every criterion here is a `tfcompress.pruning.PruningCriterion` that needs a few batches of
training data (``data=(x, y)``): before each mask update, `update_masks` calls ``prepare``,
which runs the model on ``num_batches`` batches and records what the criterion needs. Scores
are "larger = keep"; the lowest are pruned.

Channel criteria (from the pruning lecture, seed 002, "Network Pruning: Criterion"), on the
output z_k of the pruned channel as the next layer sees it: after the layer's fused activation,
or, when that is linear (Conv -> BatchNormalization -> ReLU blocks), at the first activation
layer reached through the BatchNormalization / activation layers that alone consume the
layer's output (see :func:`activation_point`). Pruning a channel makes exactly that z_k zero
(its BN output is masked), and APoZ counts zeros that only a ReLU produces: measured on the
convolution's own, pre-activation output it would be ~0 for every channel.

``MeanActivation``   mean of z_k over samples and positions (Molchanov et al. 2016, sec. 2.2).
``APoZ``             Average Percentage of Zeros of z_k (Hu et al. 2016, "Network Trimming",
                     eq. 1); the score is 1 - APoZ, so mostly-zero channels go first.
``Taylor``           S_avg(z_k) = 1/B sum_b 1/N_b sum_i |dL/dz_ik * z_ik| (lecture formula;
                     first-order Taylor expansion, Molchanov et al. 2016/2017, eq. 8).
``FLOPsTaylor``      S_FLOPs(z_k) = S_avg(z_k) - lambda * S_l^flops (lecture; Molchanov et al.
                     2016, sec. 2.3), with S_l^flops the MACs of producing one channel of layer
                     l divided by the largest such count in the model.

Weight criteria (also usable per channel: summed over the channel):

``OBD``              Optimal Brain Damage (LeCun et al. 1990, eq. 7): s_q = 1/2 h_qq w_q^2 with
                     the Hessian diagonal approximated by the empirical Fisher E[g_q^2].
``SNIP``             connection sensitivity |g_q * w_q| (Lee et al., ICLR 2019, eq. 6).
``GraSP``            gradient signal preservation, S = -w * (H g) (Wang et al., ICLR 2020, eq.
                     8); weights with the *largest* S are removed, so the score is -S.

Gradients are taken with respect to the effective weights W_eff = kernel * mask, with every
mask read as one (the dense gradient), as in `SparseTraining`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfcompress.core import trace
from tfcompress.errors import TfcompressError
from tfcompress.layers._pruning_base import PruningCriterion, channel_to_kernel, register_criterion
from tfcompress.layers.prune_low_magnitude import PruneLowMagnitude
from tfcompress.pruning.magnitude import pruning_wrappers


def _batches(data, num_batches: int, batch_size: int, seed: int):
    if data is None:
        raise TfcompressError(
            "this pruning criterion needs training data", "criterion",
            "pass data=(x, y) to the criterion (it is not saved with the model)",
        )
    x, y = data
    rng = np.random.default_rng(seed)
    for _ in range(num_batches):
        index = rng.choice(len(x), min(batch_size, len(x)), replace=False)
        yield x[index], y[index]


def _dense_mapping(wrappers, effective):
    import tensorflow as tf

    mapping = []
    for w, eff in zip(wrappers, effective, strict=True):
        mapping += [(w.kernel_variable, eff), (w.mask, tf.ones_like(eff))]
    return mapping


class _DataCriterion(PruningCriterion):
    needs_statistics = True

    def __init__(self, data=None, num_batches: int = 4, batch_size: int = 128, seed: int = 0):
        self.data, self.num_batches, self.batch_size, self.seed = data, int(num_batches), int(batch_size), int(seed)
        self._stats: dict[str, np.ndarray] = {}

    def prepare(self, model, wrappers: list[PruneLowMagnitude]) -> None:
        raise NotImplementedError

    def _stat(self, wrapper) -> np.ndarray:
        if wrapper.name not in self._stats:
            raise TfcompressError(f"no statistics for {wrapper.name}", "criterion",
                                  "masks are updated through tfcompress.pruning.update_masks")
        return self._stats[wrapper.name]

    def get_config(self) -> dict[str, Any]:
        return {"num_batches": self.num_batches, "batch_size": self.batch_size, "seed": self.seed}


_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU, keras.layers.ELU,
                      keras.layers.PReLU, keras.layers.Softmax)


def _is_linear(layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is None or activation is keras.activations.linear


def _single_consumer(layer, graph):
    """The one layer that consumes ``layer``'s (single) output in ``graph``, else None."""
    nodes = graph.nodes_of(layer)
    if len(nodes) != 1 or len(nodes[0].outputs) != 1:
        return None
    consumer = graph.single_consumer(nodes[0].outputs[0])
    if consumer is None or not consumer.is_layer or len(graph.nodes_of(consumer.op)) != 1 \
            or len(consumer.inputs) != 1:
        return None
    return consumer.op


def activation_point(wrapper, model) -> tuple[Any, bool]:
    """Where a channel's output z_k is measured: (layer whose output it is, after a nonlinearity).

    The wrapped layer itself when its fused activation is not linear; otherwise the first
    activation layer (ReLU, Activation, LeakyReLU, ELU, PReLU, Softmax) reached through layers
    that alone consume the previous one's output and are BatchNormalization (masked or not) or
    activations. If the chain ends before an activation (e.g. at a residual Add), the last
    layer reached, with ``False``.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", verbose=0)
        >>> layer, after_nonlinearity = activation_point(pruning_wrappers(pruned)[0], pruned)
        >>> layer.name == pruning_wrappers(pruned)[0].name, after_nonlinearity       # Dense(activation="relu")
        (True, True)
    """
    from tfcompress.layers.prune_low_magnitude import MaskedBatchNormalization

    if not _is_linear(wrapper.layer):
        return wrapper, True
    graph = trace(model, where="activation_point")
    point = wrapper
    while True:
        nxt = _single_consumer(point, graph)
        if isinstance(nxt, _ACTIVATION_LAYERS):
            if isinstance(nxt, keras.layers.Activation) and _is_linear(nxt):
                point = nxt
                continue
            return nxt, True
        if isinstance(nxt, keras.layers.BatchNormalization | MaskedBatchNormalization):
            point = nxt
            continue
        return point, False


class _ActivationCriterion(_DataCriterion):
    """Per-channel statistics of the pruned channels' outputs (and their gradients), measured
    at :func:`activation_point`."""

    uses_gradient = False
    needs_nonlinearity = False

    def probe_points(self, model, wrappers) -> list:
        points = []
        for w in wrappers:
            layer, nonlinear = activation_point(w, model)
            if self.needs_nonlinearity and not nonlinear:
                raise TfcompressError(
                    f"{type(self).__name__} counts the zeros of a channel after its activation, but "
                    f"{w.layer.name} has a linear activation and no activation layer follows it directly "
                    "(through BatchNormalization)",
                    w.name,
                    "give the layer activation='relu' or a ReLU after it, or choose another criterion for it "
                    "with prune(..., layers={name: {'criterion': 'l2'}})",
                )
            points.append(layer)
        return points

    def global_channel_scores(self, wrapper) -> np.ndarray:
        """Per-channel averages already compare across layers: no fan-in normalization."""
        return self.channel_scores(wrapper)

    def prepare(self, model, wrappers) -> None:
        import tensorflow as tf

        top = [w for w in wrappers if w in model.layers]
        if len(top) != len(wrappers):
            raise TfcompressError("activation criteria need the pruned layers at the top level of the model",
                                  model.name, "flatten nested models, or use a weight criterion")
        points = self.probe_points(model, top)
        # the tensors of one traced graph: a Sequential's layer.output can belong to an earlier
        # build than model.inputs (two input layers of one name, which keras.Model refuses)
        graph = trace(model, where=type(self).__name__)
        tensors = [graph.tensors[graph.nodes_of(p)[0].output] for p in points]
        probe = keras.Model([graph.tensors[t] for t in graph.inputs],
                            tensors + [graph.tensors[t] for t in graph.outputs])
        sums: dict[str, np.ndarray] = {}
        count = 0
        for xb, yb in _batches(self.data, self.num_batches, self.batch_size, self.seed):
            with tf.GradientTape() as tape:
                outs = probe(tf.constant(xb), training=False)
                acts, preds = outs[: len(top)], outs[len(top):]
                loss = model.compute_loss(x=xb, y=yb, y_pred=preds[0] if len(preds) == 1 else preds)
            grads = tape.gradient(loss, acts) if self.uses_gradient else [None] * len(acts)
            for w, a, g in zip(top, acts, grads, strict=True):
                value = self.per_sample(a.numpy(), None if g is None else g.numpy())  # (batch, channels)
                sums[w.name] = sums.get(w.name, 0) + value.sum(axis=0)
            count += len(xb)
        self._stats = {name: total / count for name, total in sums.items()}

    def per_sample(self, activation: np.ndarray, gradient: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def channel_scores(self, wrapper) -> np.ndarray:
        return self._stat(wrapper)

    def scores(self, wrapper) -> np.ndarray:
        return channel_to_kernel(wrapper, self.channel_scores(wrapper))


def _positions(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1, a.shape[-1])  # (batch, positions, channels)


@keras.saving.register_keras_serializable(package="tfcompress")
class MeanActivation(_ActivationCriterion):
    """Mean output of each channel (Molchanov et al. 2016, sec. 2.2).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> criterion = MeanActivation(data=(x, y), num_batches=1, batch_size=64)
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", criterion=criterion, verbose=0)
        >>> pruned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> _ = update_masks(pruned, step=0)
        >>> [int(w.channel_mask_numpy().sum()) for w in pruning_wrappers(pruned)]   # 2 of the hidden 4 kept
        [2]
    """

    def per_sample(self, activation, gradient):
        return _positions(activation).mean(axis=1)


@keras.saving.register_keras_serializable(package="tfcompress")
class APoZ(_ActivationCriterion):
    """1 - Average Percentage of Zeros of each channel's output after its ReLU (Hu et al. 2016,
    eq. 1). A layer with neither a fused activation nor an activation layer after it (through
    BatchNormalization) is an error: its output has no zeros to count.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> criterion = APoZ(data=(x, y), num_batches=1, batch_size=64)
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", criterion=criterion, verbose=0)
        >>> pruned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> _ = update_masks(pruned, step=0)
        >>> int(pruning_wrappers(pruned)[0].channel_mask_numpy().sum())
        2
    """

    needs_nonlinearity = True

    def per_sample(self, activation, gradient):
        return 1.0 - (_positions(activation) == 0).mean(axis=1)


@keras.saving.register_keras_serializable(package="tfcompress")
class Taylor(_ActivationCriterion):
    """S_avg(z_k) = 1/B sum_b 1/N_b sum_i |dL/dz_ik * z_ik| (lecture; Molchanov et al. 2016).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> criterion = Taylor(data=(x, y), num_batches=1, batch_size=64)
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", criterion=criterion, verbose=0)
        >>> pruned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> _ = update_masks(pruned, step=0)
        >>> int(pruning_wrappers(pruned)[0].channel_mask_numpy().sum())
        2
    """

    uses_gradient = True

    def per_sample(self, activation, gradient):
        # compute_loss averages over the batch: scale back to per-sample gradients
        batch = activation.shape[0]
        return np.abs(_positions(gradient * batch) * _positions(activation)).mean(axis=1)


@keras.saving.register_keras_serializable(package="tfcompress")
class FLOPsTaylor(Taylor):
    """S_FLOPs(z_k) = S_avg(z_k) - lambda * S_l^flops (lecture; Molchanov et al. 2016, sec. 2.3).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> criterion = FLOPsTaylor(data=(x, y), flops_weight=1e-3, num_batches=1, batch_size=64)
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", criterion=criterion, verbose=0)
        >>> pruned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> _ = update_masks(pruned, step=0)
        >>> criterion.get_config()["flops_weight"]
        0.001
    """

    def __init__(self, data=None, flops_weight: float = 1e-3, **kwargs):
        super().__init__(data, **kwargs)
        self.flops_weight = float(flops_weight)

    def prepare(self, model, wrappers) -> None:
        super().prepare(model, wrappers)
        from tfcompress.metrics import summarize

        macs = {row.name: row.macs for row in summarize(model).layers}
        per_channel = {}
        for w in wrappers:
            channels = w.channel_mask_numpy().size
            per_channel[w.name] = (macs.get(w.name) or 0) / max(channels, 1)
        largest = max(per_channel.values()) or 1.0
        for w in wrappers:
            self._stats[w.name] = self._stats[w.name] - self.flops_weight * per_channel[w.name] / largest

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "flops_weight": self.flops_weight}


class _GradientCriterion(_DataCriterion):
    """Per-weight statistics from the dense gradient of the loss w.r.t. W_eff."""

    def prepare(self, model, wrappers) -> None:
        import tensorflow as tf

        totals = [np.zeros(tuple(w.mask.shape), np.float64) for w in wrappers]
        batches = 0
        for xb, yb in _batches(self.data, self.num_batches, self.batch_size, self.seed):
            effective = [tf.constant(w.masked_kernel_numpy()) for w in wrappers]
            values = self.batch_statistic(model, wrappers, effective, tf.constant(xb), tf.constant(yb))
            for t, v in zip(totals, values, strict=True):
                t += v
            batches += 1
        self._stats = {w.name: (t / batches).astype(np.float32) for w, t in zip(wrappers, totals, strict=True)}

    def gradients(self, model, wrappers, effective, xb, yb, persistent=False):
        import tensorflow as tf

        tape = tf.GradientTape(persistent=persistent)
        with tape:
            tape.watch(effective)
            with keras.StatelessScope(state_mapping=_dense_mapping(wrappers, effective)):
                loss = model.compute_loss(x=xb, y=yb, y_pred=model(xb, training=False))
        return tape, loss

    def scores(self, wrapper) -> np.ndarray:
        return self._stat(wrapper)

    def channel_scores(self, wrapper) -> np.ndarray:
        from tfcompress.layers._pruning_base import channel_reduce

        return channel_reduce(wrapper, self.scores(wrapper), np.sum)

    def global_channel_scores(self, wrapper) -> np.ndarray:
        """The summed saliency estimates the loss change of removing the whole channel, which
        compares across layers as it is: no fan-in normalization."""
        return self.channel_scores(wrapper)


@keras.saving.register_keras_serializable(package="tfcompress")
class OBD(_GradientCriterion):
    """1/2 * E[g^2] * w^2: OBD's saliency (LeCun et al. 1990, eq. 7) with an empirical-Fisher diagonal.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), criterion=OBD(data=(x, y), num_batches=1, batch_size=64), verbose=0)
        >>> pruned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> _ = update_masks(pruned, step=0)
        >>> round(mask_sparsity(pruning_wrappers(pruned)), 3)
        0.5
    """

    def batch_statistic(self, model, wrappers, effective, xb, yb):
        tape, loss = self.gradients(model, wrappers, effective, xb, yb)
        grads = tape.gradient(loss, effective)
        return [0.5 * g.numpy() ** 2 * e.numpy() ** 2 for g, e in zip(grads, effective, strict=True)]


@keras.saving.register_keras_serializable(package="tfcompress")
class SNIP(_GradientCriterion):
    """|dL/dw * w|: connection sensitivity (Lee et al., ICLR 2019, eq. 6).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.75, 0), criterion=SNIP(data=(x, y), num_batches=1, batch_size=64), verbose=0)
        >>> pruned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> _ = update_masks(pruned, step=0)
        >>> round(mask_sparsity(pruning_wrappers(pruned)), 3)
        0.75
    """

    def batch_statistic(self, model, wrappers, effective, xb, yb):
        tape, loss = self.gradients(model, wrappers, effective, xb, yb)
        grads = tape.gradient(loss, effective)
        return [np.abs(g.numpy() * e.numpy()) for g, e in zip(grads, effective, strict=True)]


@keras.saving.register_keras_serializable(package="tfcompress")
class GraSP(_GradientCriterion):
    """-S with S = -w * (H g) (Wang et al., ICLR 2020, eq. 8): the largest S are removed first.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), criterion=GraSP(data=(x, y), num_batches=1, batch_size=64), verbose=0)
        >>> pruned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> _ = update_masks(pruned, step=0)
        >>> round(mask_sparsity(pruning_wrappers(pruned)), 3)
        0.5
    """

    def batch_statistic(self, model, wrappers, effective, xb, yb):
        import tensorflow as tf

        with tf.GradientTape() as outer:
            outer.watch(effective)
            tape, loss = self.gradients(model, wrappers, effective, xb, yb, persistent=True)
            grads = tape.gradient(loss, effective)
            # g^T stop_gradient(g): its gradient is the Hessian-vector product H g
            dot = tf.add_n([tf.reduce_sum(g * tf.stop_gradient(g)) for g in grads])
        hg = outer.gradient(dot, effective)
        del tape
        return [(e.numpy() * h.numpy()) for e, h in zip(effective, hg, strict=True)]  # -S


for _name, _cls in {"mean_activation": MeanActivation, "apoz": APoZ, "taylor": Taylor,
                    "flops_taylor": FLOPsTaylor, "obd": OBD, "snip": SNIP, "grasp": GraSP}.items():
    register_criterion(_name, _cls)


def prune_at_initialization(model, data, sparsity: float, method: str = "snip", *,
                            granularity: str = "weight", scope: str = "global",
                            min_keep_fraction: float = 0.02, num_batches: int = 1,
                            batch_size: int = 256) -> keras.Model:
    """Prune before training from one batch (SNIP, Lee et al. 2019; GraSP, Wang et al. 2020).

    Returns a `tfcompress.prune` model whose masks are set and fixed (the schedule has no
    further update); train it as usual (with or without `UpdatePruning`).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity, mask_sparsity, prune, pruning_wrappers, update_masks
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int32")
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))
        >>> model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> pruned = prune_at_initialization(model, (x, y), sparsity=0.8, method="snip")
        >>> round(mask_sparsity(pruning_wrappers(pruned)), 2)        # global scope over both layers
        0.8
    """
    from tfcompress.pruning.magnitude import prune, update_masks
    from tfcompress.pruning.schedules import ConstantSparsity

    criteria = {"snip": SNIP, "grasp": GraSP, "obd": OBD}
    if method not in criteria:
        raise TfcompressError(f"unknown method {method!r}", "prune_at_initialization", f"use one of {sorted(criteria)}")
    criterion = criteria[method](data, num_batches=num_batches, batch_size=batch_size)
    pruned = prune(model, ConstantSparsity(sparsity, begin_step=0, end_step=0), granularity, scope,
                   criterion, min_keep_fraction=min_keep_fraction)
    update_masks(pruned, 0)
    for w in pruning_wrappers(pruned):
        w.pruning_step.assign(1)  # past end_step: the masks stay as they are
    return pruned
