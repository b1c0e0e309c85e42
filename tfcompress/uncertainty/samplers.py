"""Stochastic-gradient MCMC samplers as Keras 3 optimizers: SGLD and SGHMC.

Both sample the parameter posterior ``p(theta | D) ~ exp(-U(theta) / T)`` (seed paper sec. 2.2.1,
eq. 1; ``T`` a temperature, 1 for the posterior itself) while ``fit`` runs, from minibatch
gradients of the loss Keras minimizes.

Scaling. Keras minimizes the *mean* minibatch loss ``L(theta)``: with a likelihood loss (e.g.
cross-entropy) that is ``(1/n) sum_{i in batch} -log p(y_i | x_i, theta)``, an unbiased estimate
of ``(1/N) sum_{i=1..N} -log p(y_i | x_i, theta)`` over the ``N = dataset_size`` training
examples. The posterior energy is therefore

    U(theta) = N * L(theta) - log p(theta)

(a prior written into the loss, such as the tfcompress Bayesian layers' ``KL / N`` or an L2
regularizer ``||theta||^2 / (2 N tau^2)``, is already inside ``N * L``; ``prior_stddev`` adds a
Gaussian prior ``N(0, tau^2)`` here instead). With the optimizer's ``learning_rate`` ``lr``
applied to the gradient of the mean loss, as SGD does, the step on the energy is ``h = lr / N``
and the injected noise has variance ``2 h T = 2 lr T / N``:

* SGLD (Welling and Teh 2011, "Bayesian Learning via Stochastic Gradient Langevin Dynamics",
  eq. 4: ``dtheta = eps/2 (grad log p(theta) + N/n sum grad log p(x_i | theta)) + eta``,
  ``eta ~ N(0, eps)``, with ``eps = 2 h``)::

      theta <- theta - lr * (g + theta / (N tau^2)) + sqrt(2 lr T / N) * xi,   xi ~ N(0, I)

* SGHMC (Chen, Fox and Guestrin 2014, "Stochastic Gradient Hamiltonian Monte Carlo", eq. 15:
  ``dtheta = v``, ``dv = -eta grad U~(theta) - alpha v + N(0, 2 (alpha - beta^) eta)``, with
  ``eta = h`` and the noise estimate ``beta^ = 0``)::

      v     <- (1 - alpha) v - lr * (g + theta / (N tau^2)) + sqrt(2 alpha lr T / N) * xi
      theta <- theta + v

  ``alpha`` is the friction (``1 - alpha`` the momentum of SGD with momentum).

``g`` is the minibatch gradient of the mean loss. The noise comes from a
``keras.random.SeedGenerator`` whose state is an optimizer variable: it is saved with the
optimizer (``.keras``, checkpoints), so a resumed chain continues as the uninterrupted one.
``temperature`` is a variable too: 0 turns the noise off (the cyclical schedule of
`tfcompress.uncertainty.collect.CyclicalSGMCMC` does that in its exploration stages).

A constant learning rate leaves a discretization bias of order ``h`` (Welling and Teh use
decreasing steps, eq. 3): for a Gaussian posterior of precision ``lambda`` SGLD's stationary
variance is ``T / (lambda (1 - h lambda / 2))``.

Example:

>>> import keras, numpy as np
>>> from tfcompress.uncertainty.samplers import SGLD
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
>>> model.compile(optimizer=SGLD(1e-3, dataset_size=64, seed=0), loss="mse")
>>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
>>> _ = model.fit(x, x.sum(axis=1), batch_size=16, epochs=1, verbose=0)
>>> int(model.optimizer.iterations)
4
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfcompress.errors import TfcompressError
from tfcompress.layers.variational_bn import check_dataset_size, check_positive


def _temperature(value: Any, where: str) -> float:
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")
    if not 0.0 <= number < float("inf"):
        raise TfcompressError(f"temperature must be a finite number >= 0, got {value!r}", where,
                              "pass 1 for the posterior, < 1 for a cold one, 0 for no noise")
    return number


class _StochasticGradientMCMC(keras.optimizers.Optimizer):
    """The state SGLD and SGHMC share: N, T, the prior and the noise generator."""

    def __init__(self, learning_rate: Any, dataset_size: int, temperature: float, prior_stddev: float | None,
                 seed: int | None, name: str, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        where = f"{type(self).__name__}({name})"
        self.dataset_size = check_dataset_size(dataset_size, where)
        self.initial_temperature = _temperature(temperature, where)
        self.prior_stddev = None if prior_stddev is None else check_positive(prior_stddev, "prior_stddev", where)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TfcompressError(f"seed must be an int or None, got {seed!r}", where, "pass an integer seed")
        self.seed = seed
        with keras.name_scope(self.name, caller=self):
            self.temperature = keras.Variable(self.initial_temperature, name="temperature", dtype="float32",
                                              trainable=False)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        with keras.name_scope(self.name, caller=self):
            self._seed_generator = keras.random.SeedGenerator(self.seed, name="noise_seed")
        self._track_variable(self._seed_generator.state)  # saved with the optimizer

    def _energy_gradient(self, gradient, variable):
        """``g + theta / (N tau^2)``: the gradient of ``U / N``."""
        gradient = ops.cast(gradient, variable.dtype)
        if self.prior_stddev is None:
            return gradient
        return gradient + variable / (self.dataset_size * self.prior_stddev**2)

    def _noise(self, variable, variance):
        """``sqrt(variance) * xi``, ``xi ~ N(0, I)`` shaped like ``variable``."""
        xi = keras.random.normal(ops.shape(variable), dtype=variable.dtype, seed=self._seed_generator)
        return ops.sqrt(ops.cast(variance, variable.dtype)) * xi

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"dataset_size": self.dataset_size, "temperature": self.initial_temperature,
                       "prior_stddev": self.prior_stddev, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class SGLD(_StochasticGradientMCMC):
    """Stochastic gradient Langevin dynamics (Welling and Teh 2011, eq. 4), scaled as in the
    module docstring: ``theta <- theta - lr grad(U/N) + sqrt(2 lr T / N) xi``.

    Args:
        learning_rate: ``lr`` on the mean loss (a float or a schedule); the energy step is ``lr / N``.
        dataset_size: ``N``, the number of training examples (not the batch size).
        temperature: ``T`` (1: the posterior; < 1 a cold posterior; 0: plain SGD).
        prior_stddev: ``tau`` of a Gaussian prior ``N(0, tau^2)`` on every trained variable
            (None: the prior is whatever the loss holds).
        seed: seed of the noise.
        **kwargs: the arguments of ``keras.optimizers.Optimizer`` (``clipnorm``, ``name``, ...).

    Example:

    >>> import keras
    >>> theta = keras.Variable([0.0, 0.0])
    >>> sgld = SGLD(0.1, dataset_size=10, temperature=0.0)  # T = 0: no noise, an SGD step
    >>> _ = sgld.apply_gradients([(keras.ops.convert_to_tensor([1.0, -1.0]), theta)])
    >>> [round(float(v), 6) for v in theta.numpy()]
    [-0.1, 0.1]
    >>> _ = sgld.temperature.assign(1.0)  # now the step plus N(0, 2 * 0.1 * 1 / 10) noise
    >>> _ = sgld.apply_gradients([(keras.ops.convert_to_tensor([1.0, -1.0]), theta)])
    """

    def __init__(self, learning_rate: Any = 1e-3, dataset_size: int | None = None, temperature: float = 1.0,
                 prior_stddev: float | None = None, seed: int | None = None, name: str = "sgld",
                 **kwargs: Any):
        super().__init__(learning_rate, dataset_size, temperature, prior_stddev, seed, name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        step = -lr * self._energy_gradient(gradient, variable)
        variance = 2.0 * lr * ops.cast(self.temperature, variable.dtype) / self.dataset_size
        self.assign_add(variable, step + self._noise(variable, variance))


@keras.saving.register_keras_serializable(package="tfcompress")
class SGHMC(_StochasticGradientMCMC):
    """Stochastic gradient Hamiltonian Monte Carlo with friction (Chen et al. 2014, eq. 15),
    scaled as in the module docstring; ``beta^ = 0`` (no gradient-noise estimate)::

        v <- (1 - alpha) v - lr grad(U/N) + sqrt(2 alpha lr T / N) xi;   theta <- theta + v

    Args:
        learning_rate: ``lr`` on the mean loss (``eta = lr / N`` on the energy).
        friction: ``alpha`` in (0, 1] (``1 - alpha`` is SGD's momentum; Chen et al. use 0.01-0.1).
        dataset_size, temperature, prior_stddev, seed, **kwargs: as `SGLD`.

    Example:

    >>> import keras
    >>> theta = keras.Variable([0.0])
    >>> sghmc = SGHMC(0.1, friction=0.5, dataset_size=10, temperature=0.0)
    >>> for _ in range(2):
    ...     _ = sghmc.apply_gradients([(keras.ops.convert_to_tensor([1.0]), theta)])
    >>> [round(float(v), 6) for v in theta.numpy()]  # v = -0.1, then 0.5 * -0.1 - 0.1: theta = -0.1 - 0.15
    [-0.25]
    """

    def __init__(self, learning_rate: Any = 1e-3, friction: float = 0.1, dataset_size: int | None = None,
                 temperature: float = 1.0, prior_stddev: float | None = None, seed: int | None = None,
                 name: str = "sghmc", **kwargs: Any):
        super().__init__(learning_rate, dataset_size, temperature, prior_stddev, seed, name, **kwargs)
        friction = check_positive(friction, "friction", f"SGHMC({name})")
        if friction > 1.0:
            raise TfcompressError(f"friction must be in (0, 1], got {friction}", f"SGHMC({name})",
                                  "use e.g. 0.1 (a momentum of 0.9)")
        self.friction = friction

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        velocity = self.velocities[self._get_variable_index(variable)]
        alpha = ops.cast(self.friction, variable.dtype)
        variance = 2.0 * alpha * lr * ops.cast(self.temperature, variable.dtype) / self.dataset_size
        self.assign(velocity, (1.0 - alpha) * velocity - lr * self._energy_gradient(gradient, variable)
                    + self._noise(variable, variance))
        self.assign_add(variable, velocity)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "friction": self.friction}
