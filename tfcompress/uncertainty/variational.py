"""S deterministic members drawn from a model's variational posterior (seed paper sec. 2.2.2).

"An alternative for hardware where the computational cost of on-the-fly generation of samples
from the variational posterior is prohibitive is to pre-generate and deploy a fixed variational
approximate posterior ensemble": `sample_members` draws S samples of every variational layer's
posterior ``q`` and returns S plain Keras models (Dense, Conv2D, BatchNormalization: what
`tfcompress.bayesian.strip` makes of each layer), each computing the network with its sampled
weights / noise frozen as constants, for `tfcompress.uncertainty.ensemble`.

The posteriors, as the layers define and train them (`posterior_samples`):

=================================  ==============================================================
``VariationalDense / Conv2D``      Molchanov et al. 2017, eq. 5 / sec. 4.1: every weight
                                   ``w ~ N(theta, alpha theta^2)``, ``log alpha`` clipped as the
                                   layer clips it.
``BCDense / BCConv2D``             Louizos et al. 2017, sec. 3.1: ``w_ij = z_j w~_ij``,
                                   ``z_j ~ N(mu_z, sigma_z^2)``, ``w~_ij ~ N(mu_ij, sigma_ij^2)``.
``VariationalBatchNormalization``  Zhao et al. 2019: the BN scale ``gamma_i ~ N(mu_i, sigma_i^2)``.
``DirichletSwitch``                Adamczewski and Park 2021: the switch ``s ~ Dir(phi)`` (also for
                                   ``estimator="mean"``, which trains with its mean).
``LogNormalDropout``               Neklyudov et al. 2017, sec. 4.2: ``log theta_i ~ TN(mu_i,
                                   sigma_i^2; a, b)``.
=================================  ==============================================================

One sample per member and weight / channel: a member is one draw of the network's parameters
(the layers draw per example in training, with the local reparameterization trick where they
use it; both are samples of the same ``q``). The channel masks and inference thresholds stay
as they are (a masked channel is 0 in every member; the dropped weights of sparse VD are
*sampled*, as the training objective sees them).

Example:

>>> import keras, numpy as np
>>> from tfcompress.layers import VariationalDense
>>> model = keras.Sequential([keras.Input((4,)), VariationalDense(3, dataset_size=100)])
>>> members = sample_members(model, 2, seed=0)
>>> [type(layer).__name__ for layer in members[0].layers]
['InputLayer', 'Dense']
"""

from __future__ import annotations

import keras
import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.layers.bayesian_compression import BCConv2D, BCDense
from tfcompress.layers.dirichlet import LOG_CONCENTRATION_RANGE, DirichletSwitch
from tfcompress.layers.lognormal import LogNormalDropout
from tfcompress.layers.sparse_vd import LOG_ALPHA_CLIP, VariationalConv2D, VariationalDense
from tfcompress.layers.variational_bn import VariationalBatchNormalization
from tfcompress.uncertainty.collect import member_copy

__all__ = ["VARIATIONAL_LAYERS", "draw", "posterior_samples", "sample_members"]

VARIATIONAL_LAYERS = (VariationalDense, VariationalConv2D, BCDense, BCConv2D, VariationalBatchNormalization,
                      DirichletSwitch, LogNormalDropout)


def _numpy(v) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)


def _truncated_normal(mu: np.ndarray, sigma: np.ndarray, low: float, high: float, size: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of ``TN(mu, sigma^2; low, high)`` (TFP's sampler, float64)."""
    try:
        import tensorflow_probability as tfp
    except ImportError:  # an optional dependency since issue 23 (the tfp extra)
        from tfcompress.errors import TfcompressError

        raise TfcompressError("posterior draws of LogNormalDropout (SBP) need tensorflow-probability",
                              "uncertainty.posterior_samples", "pip install 'tfcompress[tfp]'") from None

    dist = tfp.distributions.TruncatedNormal(mu, sigma, low, high)
    seed = [int(s) for s in rng.integers(0, 2**31 - 1, size=2)]
    return np.clip(np.asarray(dist.sample(size, seed=seed), np.float64), low, high)


def posterior_samples(layer: keras.layers.Layer, size: int, seed: int | np.random.Generator = 0
                      ) -> dict[str, np.ndarray]:
    """``size`` draws of ``layer``'s variational posterior (module docstring), each array ``[size, ...]``.

    Returns ``{"kernel"}`` (sparse VD; BC: the product ``z w~``, with its factors ``"z"`` and
    ``"kernel_noise_free"`` ``w~``), ``{"gamma"}`` (VBN), ``{"switch"}`` (Dirichlet: rows on the
    simplex) or ``{"noise"}`` (SBP: ``theta``).

    Example:

    >>> from tfcompress.layers import VariationalBatchNormalization
    >>> bn = VariationalBatchNormalization(dataset_size=10, initial_stddev=0.1)
    >>> bn.build((None, 3))
    >>> draws = posterior_samples(bn, 20000, seed=0)["gamma"]
    >>> np.round(draws.mean(0), 1).tolist(), np.round(draws.std(0), 2).tolist()
    ([1.0, 1.0, 1.0], [0.1, 0.1, 0.1])
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise TfcompressError(f"size must be a positive integer, got {size!r}", "posterior_samples",
                              "pass the number of samples")
    if not getattr(layer, "built", False):
        raise TfcompressError("the layer is not built", getattr(layer, "name", "layer"),
                              "call the model on data (or build it) first")
    size = int(size)
    if isinstance(layer, VariationalDense | VariationalConv2D):
        theta = _numpy(layer.kernel)
        std = np.sqrt(np.exp(_numpy(layer.log_alpha()))) * np.abs(theta)
        return {"kernel": theta + std * rng.standard_normal((size, *theta.shape))}
    if isinstance(layer, BCDense | BCConv2D):
        z = _numpy(layer.z_mu) + np.exp(0.5 * _numpy(layer.z_log_sigma2)) * rng.standard_normal(
            (size, *layer.z_mu.shape))
        mu = _numpy(layer.kernel)
        w = mu + np.exp(0.5 * np.clip(_numpy(layer.kernel_log_sigma2), -20.0, 5.0)) * rng.standard_normal(
            (size, *mu.shape))
        return {"kernel": w * z.reshape(size, *[1] * (mu.ndim - 1), -1), "z": z, "kernel_noise_free": w}
    if isinstance(layer, VariationalBatchNormalization):
        gamma = _numpy(layer.gamma)
        return {"gamma": gamma + layer.stddev() * rng.standard_normal((size, *gamma.shape))}
    if isinstance(layer, DirichletSwitch):
        phi = np.exp(np.clip(_numpy(layer.log_concentration), *LOG_CONCENTRATION_RANGE))
        return {"switch": rng.dirichlet(phi, size=size)}
    if isinstance(layer, LogNormalDropout):
        mu = np.clip(_numpy(layer.mu), layer.log_lower, layer.log_upper)
        sigma = np.exp(np.clip(_numpy(layer.log_sigma), -20.0, 5.0))
        return {"noise": np.exp(_truncated_normal(mu, sigma, layer.log_lower, layer.log_upper, size, rng))}
    raise TfcompressError(f"{type(layer).__name__} has no variational posterior tfcompress samples",
                          getattr(layer, "name", "layer"), f"use one of {[c.__name__ for c in VARIATIONAL_LAYERS]}")


def draw(model: keras.Model, size: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """`posterior_samples` of every variational layer of ``model`` (by layer name): the draws
    `sample_members` freezes, arrays ``[size, ...]``.

    Member ``i`` draws its layers in the graph's order from ``np.random.default_rng([seed, i])``,
    so the first members do not depend on ``size``.

    Example:

    >>> from tfcompress.layers import VariationalDense
    >>> model = keras.Sequential([keras.Input((4,)), VariationalDense(3, dataset_size=100, name="vd")])
    >>> draw(model, 5)["vd"]["kernel"].shape
    (5, 4, 3)
    """
    from tfcompress.core import trace

    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise TfcompressError(f"size must be a positive integer, got {size!r}", "sample_members",
                              "pass the number of members")
    graph = trace(model, where="tfcompress.uncertainty.sample_members")
    layers = []
    for node in graph.nodes:
        if isinstance(node.op, VARIATIONAL_LAYERS) and node.op not in layers:
            layers.append(node.op)
    if not layers:
        raise TfcompressError("the model has no variational layer", model.name,
                              f"sample members of a model with {[c.__name__ for c in VARIATIONAL_LAYERS]} "
                              "(e.g. from tfcompress.bayesian.convert)")
    per_member = []
    for i in range(int(size)):
        rng = np.random.default_rng([int(seed), i])
        per_member.append({layer.name: posterior_samples(layer, 1, rng) for layer in layers})
    return {layer.name: {key: np.concatenate([m[layer.name][key] for m in per_member])
                         for key in per_member[0][layer.name]} for layer in layers}


def _freeze(layer: keras.layers.Layer, sample: dict[str, np.ndarray]) -> None:
    """Set ``layer``'s variables so that its inference function is the sampled one (what
    `tfcompress.bayesian.strip` then turns into plain layers)."""
    if isinstance(layer, VariationalDense | VariationalConv2D):
        if layer.threshold <= -LOG_ALPHA_CLIP:
            raise TfcompressError(f"threshold {layer.threshold} drops every weight", layer.name,
                                  f"use a log alpha threshold above {-LOG_ALPHA_CLIP}")
        kernel = sample["kernel"]
        layer.kernel.assign(kernel.astype("float32"))
        # log alpha = log sigma^2 - log(theta^2 + 1e-8) = -20, clipped to -8: kept, no noise
        layer.log_sigma2.assign((np.log(kernel**2 + 1e-8) - 20.0).astype("float32"))
    elif isinstance(layer, BCDense | BCConv2D):
        if layer.threshold <= -LOG_ALPHA_CLIP:
            raise TfcompressError(f"threshold {layer.threshold} drops every group", layer.name,
                                  f"use a log alpha threshold above {-LOG_ALPHA_CLIP}")
        if layer.use_bias:  # in training, a group's bias is added only where it is kept (call)
            kept = keras.ops.convert_to_numpy(layer.group_gate()) != 0
            layer.bias.assign((_numpy(layer.bias) * kept).astype("float32"))
        layer.kernel.assign(sample["kernel"].astype("float32"))
        layer.z_mu.assign(np.ones(layer.z_mu.shape, "float32"))
        layer.z_log_sigma2.assign(np.full(layer.z_mu.shape, -30.0, "float32"))  # log alpha -> -8
    elif isinstance(layer, VariationalBatchNormalization):
        layer.gamma.assign(sample["gamma"].astype("float32"))
    elif isinstance(layer, DirichletSwitch):
        # softmax(log s - max log s) = s; shares below e^-25 of the largest are floored there
        with np.errstate(divide="ignore"):
            log_s = np.log(sample["switch"])
        layer.log_concentration.assign(np.clip(log_s - log_s.max(), *LOG_CONCENTRATION_RANGE).astype("float32"))
    elif isinstance(layer, LogNormalDropout):
        # a point mass at log theta: E[theta] = theta (to ~1e-9), SNR ~ 1e9 (kept)
        layer.mu.assign(np.log(sample["noise"]).astype("float32"))
        layer.log_sigma.assign(np.full(layer.mu.shape, -20.0, "float32"))


def sample_members(model: keras.Model, size: int, seed: int = 0) -> list[keras.Model]:
    """``size`` plain Keras member models, each with one draw of every variational layer's posterior.

    Member ``i`` is ``model`` with each variational layer's parameters set to the ``i``-th draw of
    `draw` (a point mass at the sample), stripped by `tfcompress.bayesian.strip` (sparse VD / BC
    layers become Dense / Conv2D with the sampled kernel, VBN a BatchNormalization with the
    sampled scale, Dirichlet / SBP factors are folded into the layer before them), with every
    layer renamed ``<name>_sample_<i>``. ``model`` is left unchanged.

    Args:
        model: a Functional / Sequential model with tfcompress variational layers (logits out).
        size: S.
        seed: the draws' seed (the same seed gives the same members).

    Example:

    >>> from tfcompress.layers import VariationalDense
    >>> model = keras.Sequential([keras.Input((4,)), VariationalDense(3, dataset_size=100, name="vd")])
    >>> first, second = sample_members(model, 2, seed=0)
    >>> first.layers[-1].name, bool(np.allclose(first.get_weights()[0], second.get_weights()[0]))
    ('vd_sample_0', False)
    """
    from tfcompress.bayesian import strip
    from tfcompress.core import rebuild, trace

    draws = draw(model, size, seed)
    graph = trace(model, where="tfcompress.uncertainty.sample_members")
    members = []
    for i in range(int(size)):
        frozen = rebuild(graph)  # a copy, weights included
        for layer in frozen.layers:
            if layer.name in draws:
                _freeze(layer, {k: v[i] for k, v in draws[layer.name].items()})
        members.append(member_copy(strip(frozen), f"_sample_{i}"))
    return members

