"""Sparse training at a fixed sparsity: SET and RigL as Keras callbacks.

The model is wrapped by ``tfcompress.prune`` (its schedule's target sparsity is the fixed
sparsity; use ``ConstantSparsity(s, begin_step=0, end_step=0)``) and trained with this callback
*instead of* `UpdatePruning`. At the start the masks are drawn at random (each layer at the
target sparsity, "uniform", or with the Erdos-Renyi-Kernel distribution, "erk"); then every
``update_freq`` steps until ``end_fraction`` of training, each layer drops the
``drop_fraction * (1 + cos(pi t / T_end)) / 2`` share of its active weights with the smallest
magnitude and grows as many inactive ones, new weights starting at 0:

SET (Mocanu et al., Nature Communications 2018, "Scalable training of artificial neural
networks with adaptive sparse connectivity", Algorithm 1): grows at random. (The cosine decay
of the drop fraction is RigL's, used for both so they compare.)

RigL (Evci et al., ICML 2020, "Rigging the Lottery: Making All Tickets Winners", Algorithm 1
and eq. 1): grows the connections with the largest magnitude of the dense gradient
dL/dW_eff, computed on a batch of ``data`` with every mask set to one.

Drop and grow sets: the k = f_decay(t) * |active| active weights of smallest |w| are dropped.
RigL grows the k of largest |dL/dW| among all weights outside the kept set, as Algorithm 1
writes it (ArgTopK over i not in theta minus I_drop): a just-dropped weight whose gradient is
large comes straight back and keeps its value, as in the authors' implementation; only
connections that were inactive before the update start at 0. SET grows k weights at random
among those inactive before the update (Mocanu et al.: new random connections).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.pruning import mask_sparsity, pruning_wrappers


def erk_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    """Erdos-Renyi-Kernel densities (Evci et al. 2020, sec. 3; Mocanu et al. 2018 for dense
    layers): density_l proportional to sum(shape_l) / prod(shape_l), scaled so that the total
    number of non-zeros is ``density * total``; layers that would exceed 1 are kept dense."""
    sizes = np.array([np.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([np.sum(s) / np.prod(s) for s in shapes], dtype=np.float64)
    dense = np.zeros(len(shapes), bool)
    while True:
        budget = density * sizes.sum() - sizes[dense].sum()
        eps = budget / (raw[~dense] * sizes[~dense]).sum()
        densities = np.where(dense, 1.0, eps * raw)
        if not (densities > 1.0).any():
            return densities.tolist()
        dense |= densities > 1.0


@keras.saving.register_keras_serializable(package="tfcompress")
class SparseTraining(keras.callbacks.Callback):
    """Dynamic sparse training with a fixed parameter budget (SET or RigL).

    Args:
        method: ``"rigl"`` or ``"set"``.
        update_freq: steps between connectivity updates (Delta T).
        drop_fraction: initial fraction of active weights replaced per update (alpha).
        end_fraction: no updates after this fraction of ``total_steps`` (T_end).
        total_steps: the number of training steps (epochs * steps per epoch).
        distribution: ``"uniform"`` or ``"erk"`` initial per-layer sparsity.
        data: ``(x, y)`` arrays for RigL's dense gradient (a batch is drawn from them).
        batch_size: size of that batch.
        seed: random seed for the initial masks, SET's growth and RigL's batches.

    Resuming: the masks and kernels are the wrappers' variables and the step their
    ``pruning_step`` (read at the first batch, after ``BackupAndRestore`` restored it, whatever
    the callbacks' order); every update draws from a generator seeded with ``(seed, step)``. A
    run resumed after a kill therefore rewires as the uninterrupted run does.

    Example:

    >>> import keras, numpy as np, tfcompress
    >>> from tfcompress.callbacks import SparseTraining
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="fc"), keras.layers.Dense(2)])
    >>> sparse = tfcompress.prune(model, tfcompress.pruning.ConstantSparsity(0.5, 0, 0))
    >>> sparse.compile("sgd", "mse")
    >>> callback = SparseTraining("set", update_freq=2, total_steps=8)
    >>> _ = sparse.fit(np.ones((32, 4)), np.ones((32, 2)), batch_size=4, verbose=0, callbacks=[callback])
    >>> callback.updates, float(tfcompress.pruning.mask_sparsity(tfcompress.pruning.pruning_wrappers(sparse)))
    (3, 0.5)
    """

    def __init__(self, method: str = "rigl", update_freq: int = 100, drop_fraction: float = 0.3,
                 end_fraction: float = 0.75, total_steps: int | None = None,
                 distribution: str = "uniform", data=None, batch_size: int = 256, seed: int = 0):
        super().__init__()
        if method not in ("rigl", "set"):
            raise TfcompressError(f"unknown method {method!r}", "SparseTraining", "use 'rigl' or 'set'")
        if distribution not in ("uniform", "erk"):
            raise TfcompressError(f"unknown distribution {distribution!r}", "SparseTraining", "use 'uniform' or 'erk'")
        if total_steps is None or total_steps <= 0:
            raise TfcompressError("total_steps is required", "SparseTraining", "pass epochs * steps_per_epoch")
        self.method, self.update_freq, self.drop_fraction = method, int(update_freq), float(drop_fraction)
        self.end_fraction, self.total_steps, self.distribution = float(end_fraction), int(total_steps), distribution
        self.data, self.batch_size, self.seed = data, int(batch_size), int(seed)
        self.updates = 0  # connectivity updates made by this callback object
        self.step: int | None = None

    def rng(self, step: int | None = None) -> np.random.Generator:
        """The random stream of the initial masks (``step=None``) or of the update at ``step``.

        A function of ``seed`` and the step only, not a generator carried from update to update:
        a run resumed from a checkpoint draws what an uninterrupted run draws.
        """
        return np.random.default_rng(self.seed if step is None else (self.seed, int(step)))

    # -- masks
    def _initial_masks(self) -> None:
        wrappers = self._wrappers
        sparsity = wrappers[0].pruning_schedule.final_sparsity
        shapes = [tuple(w.mask.shape) for w in wrappers]
        rng = self.rng()
        if self.distribution == "erk":
            densities = erk_densities(shapes, 1.0 - sparsity)
        else:
            densities = [1.0 - sparsity] * len(wrappers)
        for w, density in zip(wrappers, densities, strict=True):
            size = int(np.prod(w.mask.shape))
            keep = int(round(density * size))
            flat = np.zeros(size, np.float32)
            flat[rng.choice(size, keep, replace=False)] = 1.0
            mask = flat.reshape(w.mask.shape)
            w.mask.assign(mask)
            w.kernel_variable.assign(keras.ops.convert_to_numpy(w.kernel_variable) * mask)

    def _dense_gradients(self, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        import tensorflow as tf

        x, y = self.data
        rng = self.rng() if rng is None else rng
        index = rng.choice(len(x), min(self.batch_size, len(x)), replace=False)
        xb, yb = tf.constant(x[index]), tf.constant(y[index])
        effective = [tf.constant(w.masked_kernel_numpy()) for w in self._wrappers]
        mapping = []
        for w, eff in zip(self._wrappers, effective, strict=True):
            mapping += [(w.kernel_variable, eff), (w.mask, tf.ones_like(eff))]
        with tf.GradientTape() as tape:
            tape.watch(effective)
            # Inside this scope every kernel reads as W_eff and every mask as 1, so the
            # gradient is dL/dW_eff at active and inactive positions alike.
            with keras.StatelessScope(state_mapping=mapping):
                y_pred = self.model(xb, training=False)
                loss = self.model.compute_loss(x=xb, y=yb, y_pred=y_pred)
        return [g.numpy() for g in tape.gradient(loss, effective)]

    def _update(self, step: int) -> None:
        fraction = self.drop_fraction * (1 + math.cos(math.pi * step / (self.end_fraction * self.total_steps))) / 2
        rng = self.rng(step)
        grads = self._dense_gradients(rng) if self.method == "rigl" else None
        for i, w in enumerate(self._wrappers):
            mask = keras.ops.convert_to_numpy(w.mask).reshape(-1)
            kernel = keras.ops.convert_to_numpy(w.kernel_variable).reshape(-1)
            active = np.flatnonzero(mask)
            inactive = np.flatnonzero(mask == 0)
            count = min(int(fraction * active.size), inactive.size)
            if count == 0:
                continue
            drop = active[np.argsort(np.abs(kernel[active]), kind="stable")[:count]]
            if self.method == "rigl":
                g = np.abs(grads[i].reshape(-1))
                # Algorithm 1: grow among everything outside the kept set (dropped ones included)
                candidates = np.union1d(inactive, drop)
                grow = candidates[np.argsort(-g[candidates], kind="stable")[:count]]
            else:
                grow = rng.choice(inactive, count, replace=False)
            new = np.setdiff1d(grow, active)  # connections that were not active before
            mask[drop] = 0.0
            mask[grow] = 1.0
            kernel[np.setdiff1d(drop, grow)] = 0.0
            kernel[new] = 0.0  # new connections start at zero; a regrown one keeps its value
            w.mask.assign(mask.reshape(w.mask.shape))
            w.kernel_variable.assign(kernel.reshape(w.kernel_variable.shape))
        self.updates += 1

    # -- callback
    def on_train_begin(self, logs=None):
        self._wrappers = pruning_wrappers(self.model)
        if not self._wrappers:
            raise TfcompressError("SparseTraining found no pruned layer", self.model.name,
                                  "wrap the model with tfcompress.prune(model, ConstantSparsity(s, 0, 0))")
        if self.method == "rigl" and self.data is None:
            raise TfcompressError("RigL needs data for its dense gradient", "SparseTraining",
                                  "pass data=(x_train, y_train) (it is not saved in the callback's config)")
        # a fresh model starts from random masks; when BackupAndRestore comes later in the
        # callbacks it then overwrites them (and the step) with the checkpoint's
        if int(keras.ops.convert_to_numpy(self._wrappers[0].pruning_step)) == 0:
            self._initial_masks()
        self.step = None  # read at the first batch, after every callback's on_train_begin

    def on_train_batch_begin(self, batch, logs=None):
        if self.step is None:
            self.step = int(keras.ops.convert_to_numpy(self._wrappers[0].pruning_step))
        if 0 < self.step <= self.end_fraction * self.total_steps and self.step % self.update_freq == 0:
            self._update(self.step)
        self.step += 1
        for w in self._wrappers:
            w.pruning_step.assign(self.step)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["sparsity"] = mask_sparsity(self._wrappers)

    def get_config(self) -> dict[str, Any]:
        return {"method": self.method, "update_freq": self.update_freq, "drop_fraction": self.drop_fraction,
                "end_fraction": self.end_fraction, "total_steps": self.total_steps,
                "distribution": self.distribution, "batch_size": self.batch_size, "seed": self.seed}
