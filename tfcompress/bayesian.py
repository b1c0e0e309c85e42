"""Bayesian structured pruning, model level: ``convert`` a trained model, read its ``structure``,
optionally cut it to a chosen sub-architecture by posterior importance (``prune_to``), ``strip``
it to a plain Keras model that ``tfcompress.shrink`` cuts and ``to_tflite`` exports.

Methods (the layers cite their papers and equations):

=============  ==================================================================================
``vcp``        every BatchNormalization becomes a `VariationalBatchNormalization` (Zhao et al.
               2019); a Conv2D / Dense without one gets an identity-initialized one inserted
               between it and its activation (so the function is unchanged at conversion).
``slimming``   the same BN placement, with the `NetworkSlimming` L1 penalty on gamma
               (Liu et al. 2017); channels with |gamma| below ``threshold`` are pruned.
``dirichlet``  a `DirichletSwitch` after every Conv2D / Dense but the output layer (Adamczewski
               and Park 2021); with ``freeze=True`` (default) only the switches train (step 2 of
               the paper's algorithm).
``sbp``        a `LogNormalDropout` after every Conv2D / Dense but the output layer (Neklyudov
               et al. 2017). Not function-preserving at conversion: with the layer's default
               initialization every channel starts scaled by E[theta] ~ 0.9615 (see
               `LogNormalDropout`).
``sparse_vd``  Dense / Conv2D become `VariationalDense` / `VariationalConv2D` with the learned
               kernel as the posterior mean (Molchanov et al. 2017).
``bc``         Dense / Conv2D but the output layer become `BCDense` / `BCConv2D` (Louizos et al.
               2017, group normal-Jeffreys).
=============  ==================================================================================

The KL terms are scaled by 1 / ``dataset_size`` (the number of training examples), so ``fit``
minimizes the negative ELBO per example; pass ``len(x_train)``.

Tuning: the papers train for hundreds of epochs. Fine-tuning a trained model for a few epochs
with the plain ELBO (beta = 1) moves the variational parameters too little to prune (Adam moves
each by about the learning rate per step); a beta-ELBO (``KLAnnealing(max_weight=beta)``) trades
accuracy for channels, and how many go depends steeply on beta and the epochs. Measure it on
your model with ``benchmarks/explore_bayesian.py`` (kept channels after every epoch, then
accuracy through fine-tuning of the shrunk model) before a long run. When the target is a size
(a params or MACs budget) rather than a beta, ``prune_to`` cuts any trained Bayesian model to a
chosen sub-architecture by its posterior importance, as the Dirichlet pruning paper does; fine-tune
the shrunk model after, e.g. with ``tfcompress.distillation.Distiller``.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.layers.bayesian_compression import BCConv2D, BCDense
from tfcompress.layers.dirichlet import DirichletSwitch, freeze_all_but_switches
from tfcompress.layers.lognormal import LogNormalDropout
from tfcompress.layers.sparse_vd import VariationalConv2D, VariationalDense
from tfcompress.layers.variational_bn import VariationalBatchNormalization, top_k_channels
from tfcompress.regularizers import NetworkSlimming

logger = logging.getLogger("tfcompress")

METHODS = ("vcp", "dirichlet", "sbp", "sparse_vd", "bc", "slimming")
_PRODUCERS = (keras.layers.Conv2D, keras.layers.Dense)
_BAYESIAN = (VariationalBatchNormalization, DirichletSwitch, LogNormalDropout, VariationalDense,
             VariationalConv2D, BCDense, BCConv2D)

for _cls in _BAYESIAN:  # shrink / strip recognise these
    _cls.tfcompress_bayesian = True


def _is_producer(layer) -> bool:
    return isinstance(layer, _PRODUCERS) and not isinstance(
        layer, keras.layers.DepthwiseConv2D | keras.layers.SeparableConv2D | keras.layers.Conv2DTranspose)


def _identity_bn(channels: int, name: str, rank: int = 2, **kwargs) -> keras.layers.BatchNormalization:
    # momentum 0.9: an inserted BN has no statistics yet and should learn them quickly
    bn = keras.layers.BatchNormalization(name=name, momentum=0.9, **kwargs)
    bn.build((None,) * (rank - 1) + (channels,))
    eps = bn.epsilon
    bn.set_weights([np.ones(channels), np.zeros(channels), np.zeros(channels), np.full(channels, 1.0 - eps)])
    return bn


def convert(model, method: str, *, dataset_size: int, layers=None, freeze: bool | None = None,
            slimming_strength: float = 1e-4, **layer_kwargs) -> keras.Model:
    """The Bayesian counterpart of a trained Sequential / Functional model, keeping its weights.

    Args:
        model: the trained model.
        method: one of ``"vcp"``, ``"dirichlet"``, ``"sbp"``, ``"sparse_vd"``, ``"bc"``, ``"slimming"``.
        dataset_size: the number of training examples (the KL is divided by it).
        layers: optional names of the Conv2D / Dense layers to make Bayesian (default: all).
        freeze: Dirichlet only: train only the switches (default True).
        slimming_strength: L1 strength on BN gammas for ``"slimming"``.
        **layer_kwargs: passed to the Bayesian layers (``prior_stddev``, ``threshold``, ...).
    """
    from tfcompress.surgery import _graph

    if method not in METHODS:
        raise TfcompressError(f"unknown method {method!r}", "convert", f"use one of {METHODS}")
    if not isinstance(model, keras.Model) or type(model).__name__ not in ("Functional", "Sequential"):
        raise TfcompressError("convert needs a built Sequential or Functional model",
                              getattr(model, "name", "model"), "build it with keras.Input")
    nodes, inputs, outputs, tensors = _graph(model)
    consumers: dict[int, list] = {}
    for node in nodes:
        for t in node.inputs:
            consumers.setdefault(t, []).append(node)
    output_layers = {id(tensors[t]._keras_history.operation) for t in outputs}
    chosen = (lambda layer: True) if layers is None else (lambda layer: layer.name in layers)

    new_tensors: dict[int, Any] = {}
    new_inputs = []
    for tid in inputs:
        t = tensors[tid]
        new = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=t.name)
        new_tensors[tid] = new
        new_inputs.append(new)
    bn_method = method in ("vcp", "slimming")

    def make_bn(source_bn=None, channels=None, name=None, rank=2):
        if method == "vcp":
            if source_bn is not None:
                return VariationalBatchNormalization.from_batch_normalization(source_bn, dataset_size, **layer_kwargs)
            identity = _identity_bn(channels, name, rank)
            return VariationalBatchNormalization.from_batch_normalization(identity, dataset_size, **layer_kwargs)
        config = (source_bn.get_config() if source_bn is not None else {"name": name, "momentum": 0.9})
        config["gamma_regularizer"] = NetworkSlimming(slimming_strength)
        bn = keras.layers.BatchNormalization.from_config(config)
        width = channels if channels else int(source_bn.moving_mean.shape[0])
        bn.build((None,) * (rank - 1) + (width,))
        bn.set_weights(source_bn.get_weights() if source_bn is not None else _identity_bn(width, "tmp").get_weights())
        return bn

    for node in nodes:
        layer = node.layer
        if isinstance(layer, keras.layers.InputLayer):
            continue
        args = [new_tensors[t] for t in node.inputs]
        x = args if len(args) > 1 else args[0]
        is_output = id(layer) in output_layers
        if bn_method and isinstance(layer, keras.layers.BatchNormalization):
            bn = make_bn(source_bn=layer, rank=len(tensors[node.output].shape))
            new_tensors[node.output] = bn(x)
            continue
        if _is_producer(layer) and chosen(layer) and not is_output:
            config = layer.get_config()
            activation = config.get("activation", "linear")
            users = consumers.get(node.output, [])
            followed_by_bn = len(users) == 1 and isinstance(users[0].layer, keras.layers.BatchNormalization)
            if bn_method and not followed_by_bn:
                config["activation"] = "linear"
                fresh = layer.__class__.from_config(config)
                out = fresh(x)
                fresh.set_weights(layer.get_weights())
                channels = int(layer.get_weights()[0].shape[-1])
                out = make_bn(channels=channels, name=f"{layer.name}_bn", rank=len(out.shape))(out)
                out = keras.layers.Activation(activation, name=f"{layer.name}_activation")(out)
                new_tensors[node.output] = out
                continue
            if method in ("sparse_vd", "bc"):
                cls = {("sparse_vd", True): VariationalDense, ("sparse_vd", False): VariationalConv2D,
                       ("bc", True): BCDense, ("bc", False): BCConv2D}[(method, isinstance(layer, keras.layers.Dense))]
                common = {"dataset_size": dataset_size, "activation": activation,
                          "use_bias": config.get("use_bias", True), "name": layer.name, **layer_kwargs}
                if isinstance(layer, keras.layers.Dense):
                    new_layer = cls(layer.units, **common)
                else:
                    new_layer = cls(layer.filters, layer.kernel_size, strides=layer.strides,
                                    padding=layer.padding, **common)
                out = new_layer(x)
                weights = layer.get_weights()
                new_layer.kernel.assign(weights[0])
                if len(weights) > 1 and new_layer.bias is not None:
                    new_layer.bias.assign(weights[1])
                new_tensors[node.output] = out
                continue
            fresh = layer.__class__.from_config(config)
            out = fresh(x)
            fresh.set_weights(layer.get_weights())
            if method in ("dirichlet", "sbp") and not (followed_by_bn):
                switch = (DirichletSwitch(dataset_size=dataset_size, name=f"{layer.name}_switch", **layer_kwargs)
                          if method == "dirichlet" else
                          LogNormalDropout(dataset_size=dataset_size, name=f"{layer.name}_sbp", **layer_kwargs))
                out = switch(out)
            new_tensors[node.output] = out
            continue
        if method in ("dirichlet", "sbp") and isinstance(layer, keras.layers.BatchNormalization):
            # the switch goes after the BatchNormalization that follows a producer
            producer = tensors[node.inputs[0]]._keras_history.operation
            fresh = layer.__class__.from_config(layer.get_config())
            out = fresh(x)
            fresh.set_weights(layer.get_weights())
            if _is_producer(producer) and chosen(producer) and id(producer) not in output_layers:
                switch = (DirichletSwitch(dataset_size=dataset_size, name=f"{producer.name}_switch", **layer_kwargs)
                          if method == "dirichlet" else
                          LogNormalDropout(dataset_size=dataset_size, name=f"{producer.name}_sbp", **layer_kwargs))
                out = switch(out)
            new_tensors[node.output] = out
            continue
        fresh = layer.__class__.from_config(layer.get_config())
        out = fresh(x)
        if layer.weights:
            fresh.set_weights(layer.get_weights())
        new_tensors[node.output] = out
    new_outputs = [new_tensors[t] for t in outputs]
    converted = keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                            new_outputs[0] if len(new_outputs) == 1 else new_outputs, name=f"{model.name}_{method}")
    if method == "dirichlet" and (freeze is None or freeze):
        freeze_all_but_switches(converted)
    return converted


def _slimming_keep(bn, threshold: float) -> np.ndarray:
    return np.abs(keras.ops.convert_to_numpy(bn.gamma)) > threshold


def structure(model, *, slimming_threshold: float | None = None) -> dict[str, dict[str, Any]]:
    """The channels each Bayesian layer keeps: ``{layer: {"kept", "total", "keep_mask"}}``.

    Bayesian Compression layers (``BCDense`` / ``BCConv2D``) also report ``"bit_precision"``:
    the bits per weight their kept weights need (``BCDense.bit_precision``; None when the layer
    keeps nothing).

    For a ``slimming`` model (plain BatchNormalization with a NetworkSlimming penalty), pass
    ``slimming_threshold``: channels with |gamma| at or below it are dropped.
    """
    out: dict[str, dict[str, Any]] = {}
    # recursive, as prune_to: a Bayesian model inside another (a Distiller's student) is found too
    for layer in model._flatten_layers(include_self=False, recursive=True):
        keep = None
        if isinstance(layer, _BAYESIAN):
            keep = layer.keep_mask()
        elif (slimming_threshold is not None and isinstance(layer, keras.layers.BatchNormalization)
              and isinstance(layer.gamma_regularizer, NetworkSlimming)):
            keep = _slimming_keep(layer, slimming_threshold)
        if keep is not None:
            keep = np.asarray(keep, bool)
            out[layer.name] = {"kept": int(keep.sum()), "total": int(keep.size), "keep_mask": keep.tolist()}
            if isinstance(layer, BCDense | BCConv2D):
                out[layer.name]["bit_precision"] = layer.bit_precision()
    return out


def scored_layers(model, names: list[str], where: str = "prune_to") -> dict[str, Any]:
    """``{name: the Bayesian layer that scores its channels}``: ``name`` is a Bayesian layer's name
    or that of the Conv2D / Dense whose outputs it multiplies (a clear error for any other)."""
    by_name: dict[str, Any] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, _BAYESIAN):
            by_name[layer.name] = layer
            if isinstance(layer, VariationalBatchNormalization | DirichletSwitch | LogNormalDropout):
                producer = _producer_of(layer)
                if producer is not None:
                    by_name.setdefault(producer.name, layer)
    for name in names:
        if name not in by_name:
            raise TfcompressError(f"no Bayesian layer scores the channels of {name!r}", where,
                                  f"use one of {sorted(by_name)}")
    return {name: by_name[name] for name in names}


def prune_to(model, keep: dict[str, int]) -> dict[str, int]:
    """Cut a trained Bayesian model to a chosen sub-architecture, by posterior importance.

    Step 3 of Dirichlet pruning (Adamczewski and Park 2021, Algorithm 1: "remove unimportant
    channels according to the learned importance"; the paper prunes LeNet-5 to sub-architectures
    of a chosen size), for any method: in each named layer, keep the ``k`` channels of highest
    ``channel_importance()`` (Dirichlet: posterior mean; VCP: |mu|; SBP: SNR; BC: -log alpha of
    the group; sparse VD: surviving weights) among those the layer still keeps, and mask the
    rest. ``strip`` + ``tfcompress.shrink`` then remove them; fine-tune after (step 4).

    Args:
        model: a model from ``convert``, trained.
        keep: ``{name: k}``; ``name`` is a Bayesian layer's name or the name of the Conv2D /
            Dense whose channels it scores (``{"conv1": 5, "conv2": 15, "fc1": 45}``).

    Returns:
        ``{bayesian layer name: channels masked by this call}``.
    """
    layers = scored_layers(model, list(keep))
    validate_keep(layers, keep)
    return mask_to(layers, keep)


def validate_keep(layers: dict[str, Any], keep: dict[str, int], where: str = "prune_to") -> None:
    """Each ``keep[name]`` is a channel count from 1 to the size of ``layers[name]`` (a clear error otherwise)."""
    for name, k in keep.items():
        total = int(layers[name].mask.shape[0])
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= total:
            raise TfcompressError(f"keep[{name!r}] = {k!r} is not a channel count of a {total}-channel layer",
                                  where, f"pass an integer from 1 to {total}")


def mask_to(layers: dict[str, Any], keep: dict[str, int]) -> dict[str, int]:
    """Mask all but the ``keep[name]`` most important live channels of each of ``layers``
    (from :func:`scored_layers`, counts checked by :func:`validate_keep`); what :func:`prune_to`
    does once and ``callbacks.PosteriorPruning`` step by step. Returns the channels masked."""
    masked: dict[str, int] = {}
    for name, k in keep.items():
        layer = layers[name]
        alive = np.asarray(layer.keep_mask(), bool)
        if int(alive.sum()) <= k:
            logger.info("prune_to: %s keeps %d channels, already <= %d", layer.name, int(alive.sum()), k)
            masked[layer.name] = 0
            continue
        chosen = top_k_channels(layer.channel_importance(), alive, k)
        before = np.asarray(layer.mask.numpy()) > 0
        layer.mask.assign((before & chosen).astype(np.float32))
        masked[layer.name] = int(before.sum() - (before & chosen).sum())
    return masked


def cost_scales(model, *, macs_weight: float = 1.0, params_weight: float = 1.0) -> dict[str, float]:
    """KL weight factors that make each Bayesian layer's channels as dear as they are costly.

    The ELBO prices a channel of every layer alike, yet a first-layer channel of LeNet-5 costs
    about 14,400 MACs on its own and a hidden unit of the dense layer about 800. MorphNet
    (Gordon et al., CVPR 2018, Sec. 3.2, the FLOP regularizer) weighs each channel's sparsity
    penalty by the resources it costs; here each layer's KL is weighed alike::

        cost_l  = macs_weight * dMACs_l / MACs + params_weight * dParams_l / params
        scale_l = cost_l / mean_l(cost_l)

    where dMACs_l and dParams_l are what removing one more of layer l's channels would save in
    the model as it stands (its masks applied: ``strip`` + ``shrink`` with and without that
    channel), and MACs, params its current totals (MACs of the convolutions and dense layers,
    ``ModelSummary.linear_macs``). Pass the result to
    ``KLAnnealing(layer_scales=...)``. The scales are a tempered prior (a deliberate departure
    from the ELBO, towards a budget in MACs and parameters), not a posterior.

    Args:
        model: a model from ``convert``.
        macs_weight, params_weight: how much MACs and parameters count (>= 0, not both 0).

    Returns:
        ``{bayesian layer name: scale}``, with mean 1 over the layers that have a channel to
        spare (a layer down to one channel gets scale 1).
    """
    from tfcompress.metrics import summarize
    from tfcompress.surgery import shrink

    macs_weight, params_weight = float(macs_weight), float(params_weight)
    if min(macs_weight, params_weight) < 0 or macs_weight + params_weight <= 0:
        raise TfcompressError(f"macs_weight={macs_weight}, params_weight={params_weight}", "cost_scales",
                              "pass non-negative weights, at least one of them > 0")
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, _BAYESIAN)]
    if not layers:
        raise TfcompressError("the model has no Bayesian layer", "cost_scales",
                              "convert it first: tfcompress.bayesian.convert(model, method, dataset_size=N)")

    def totals() -> tuple[float, float]:
        summary = summarize(shrink(strip(model)))
        return float(summary.linear_macs), float(summary.params)

    base_macs, base_params = totals()
    costs: dict[str, float] = {}
    for layer in layers:
        alive = np.asarray(layer.keep_mask(), bool)
        if alive.sum() <= 1:
            continue
        before = layer.mask.numpy()
        weakest = np.flatnonzero(alive)[np.argmin(np.asarray(layer.channel_importance())[alive])]
        trial = before.copy()
        trial[weakest] = 0.0
        layer.mask.assign(trial)
        try:
            macs, params = totals()
        finally:
            layer.mask.assign(before)
        costs[layer.name] = (macs_weight * (base_macs - macs) / base_macs
                             + params_weight * (base_params - params) / base_params)
    mean = float(np.mean(list(costs.values()))) if costs else 0.0
    return {layer.name: (costs[layer.name] / mean if layer.name in costs and mean > 0 else 1.0)
            for layer in layers}


def _producer_of(layer):
    node = layer._inbound_nodes[0]
    return node.parent_nodes[0].operation if node.parent_nodes else None


def strip(model, *, slimming_threshold: float | None = None) -> keras.Model:
    """A plain Keras model computing the Bayesian model's inference function.

    VCP BN -> BatchNormalization (masked channels 0); switches / SBP gates -> folded into the
    preceding Conv2D / Dense kernel and bias (their factors are >= 0, and ReLU / linear
    activations commute with them); sparse VD / BC layers -> Dense / Conv2D with their
    posterior-mean weights. Every dropped channel ends with an all-zero kernel slice and bias
    (and zero BN gamma / beta), so `tfcompress.shrink` removes it.

    A Dirichlet model's weights were frozen for step 2 of the paper's algorithm (only the
    switches train); its stripped model is trainable again, ready for step 3 (fine-tuning the
    pruned network).
    """
    from tfcompress.surgery import _graph

    nodes, inputs, outputs, tensors = _graph(model)
    unfreeze = any(isinstance(node.layer, DirichletSwitch) for node in nodes)
    new_tensors: dict[int, Any] = {}
    new_inputs = []
    for tid in inputs:
        t = tensors[tid]
        new = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=t.name)
        new_tensors[tid] = new
        new_inputs.append(new)
    # channel factors to fold into producers: producer name -> per-channel factor
    factors: dict[str, np.ndarray] = {}
    for node in nodes:
        layer = node.layer
        if isinstance(layer, DirichletSwitch | LogNormalDropout):
            source = _producer_of(layer)
            if isinstance(source, keras.layers.BatchNormalization):
                source_bn = source
                source = _producer_of(source)
                factors[source_bn.name] = layer.channel_scale()
            elif not _is_producer(source) or getattr(source.activation, "__name__", "linear") not in ("relu", "linear"):
                raise TfcompressError(f"{layer.name} does not follow a Conv2D / Dense with a ReLU or linear activation",
                                      layer.name, "place switches right after such layers")
            else:
                factors[source.name] = layer.channel_scale()
        if isinstance(layer, VariationalBatchNormalization) or (
                slimming_threshold is not None and isinstance(layer, keras.layers.BatchNormalization)
                and isinstance(getattr(layer, "gamma_regularizer", None), NetworkSlimming)):
            keep = layer.keep_mask() if isinstance(layer, VariationalBatchNormalization) else \
                _slimming_keep(layer, slimming_threshold)
            source = _producer_of(layer)
            if _is_producer(source):
                factors.setdefault(source.name, np.ones(keep.size))
                factors[source.name] = factors[source.name] * keep
    built = []
    for node in nodes:
        layer = node.layer
        if isinstance(layer, keras.layers.InputLayer):
            continue
        args = [new_tensors[t] for t in node.inputs]
        x = args if len(args) > 1 else args[0]
        if isinstance(layer, DirichletSwitch | LogNormalDropout):
            new_tensors[node.output] = x  # folded into the producer
            continue
        if isinstance(layer, VariationalBatchNormalization):
            new = layer.to_batch_normalization()
            weights = new.get_weights()
        elif isinstance(layer, VariationalDense | VariationalConv2D | BCDense | BCConv2D):
            dense = isinstance(layer, VariationalDense | BCDense)
            config = {"name": layer.name, "activation": keras.activations.serialize(layer.activation),
                      "use_bias": True}
            if dense:
                new = keras.layers.Dense(layer.units, **config)
            else:
                new = keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                          padding=layer.padding, **config)
            if isinstance(layer, BCDense | BCConv2D):
                weights = layer.deterministic_weights()
            else:
                mask = np.asarray(layer.mask.numpy())
                kernel = keras.ops.convert_to_numpy(layer.sparse_kernel()) * mask
                bias = keras.ops.convert_to_numpy(layer.bias) * mask if layer.use_bias else np.zeros(mask.shape)
                weights = [kernel, bias]
        else:
            new = layer.__class__.from_config(layer.get_config())
            if isinstance(new, keras.layers.BatchNormalization) and new.gamma_regularizer is not None:
                new.gamma_regularizer = None
            weights = layer.get_weights()
        if unfreeze:
            new.trainable = True
        out = new(x)
        if new.weights:
            if layer.name in factors and _is_producer(layer):
                factor = factors[layer.name]
                weights = [weights[0] * factor] + ([weights[1] * factor] if len(weights) > 1 else [])
            elif layer.name in factors and isinstance(layer, keras.layers.BatchNormalization):
                factor = factors[layer.name]  # a switch after BN: scale gamma and beta
                weights = [weights[0] * factor, weights[1] * factor, *weights[2:]]
            new.set_weights(weights)
        built.append(new)
        new_tensors[node.output] = out
    # zero the producer channels whose BN output is forced to zero, so shrink sees them dead
    by_name = {layer.name: layer for layer in built}
    for layer in built:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta = layer.get_weights()[:2]
            dead = (gamma == 0) & (beta == 0)
            source = _producer_of(layer)
            if dead.any() and source is not None and source.name in by_name and _is_producer(by_name[source.name]):
                w = by_name[source.name].get_weights()
                w[0][..., dead] = 0
                if len(w) > 1:
                    w[1][dead] = 0
                by_name[source.name].set_weights(w)
    new_outputs = [new_tensors[t] for t in outputs]
    return keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                       new_outputs[0] if len(new_outputs) == 1 else new_outputs, name=model.name)
