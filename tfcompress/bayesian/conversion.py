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

from tfcompress.core import call_copy, copy_layer, iter_layers, rebuild, trace
from tfcompress.core.strip import register_stripper
from tfcompress.errors import TfcompressError
from tfcompress.layers.bayesian_compression import BCConv2D, BCDense
from tfcompress.layers.dirichlet import DirichletSwitch, freeze_all_but_switches
from tfcompress.layers.lognormal import LogNormalDropout
from tfcompress.layers.sparse_vd import VariationalConv2D, VariationalDense
from tfcompress.layers.variational_bn import VariationalBatchNormalization
from tfcompress.pruning import surgery as _surgery  # noqa: F401  (strip order: pruning first)
from tfcompress.pruning.regularizers import NetworkSlimming
from tfcompress.report import SKIPPED, CompressionReport, attach, check_verbose

logger = logging.getLogger("tfcompress")

METHODS = ("vcp", "dirichlet", "sbp", "sparse_vd", "bc", "slimming")
# the layer types the methods have Bayesian counterparts for (exact types: a subclass may compute
# something else); True for dense
_CONVERTIBLE = {keras.layers.Dense: True, keras.layers.Conv2D: False}
_BAYESIAN = (VariationalBatchNormalization, DirichletSwitch, LogNormalDropout, VariationalDense,
             VariationalConv2D, BCDense, BCConv2D)

for _cls in _BAYESIAN:  # shrink / strip recognise these
    _cls.tfcompress_bayesian = True


def _is_producer(layer) -> bool:
    return type(layer) in _CONVERTIBLE


def _is_dense(layer) -> bool:
    return _CONVERTIBLE.get(type(layer), False)


def _is_batch_norm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def _identity_bn(channels: int, name: str, rank: int = 2, **kwargs) -> keras.layers.BatchNormalization:
    # momentum 0.9: an inserted BN has no statistics yet and should learn them quickly
    bn = keras.layers.BatchNormalization(name=name, momentum=0.9, **kwargs)
    bn.build((None,) * (rank - 1) + (channels,))
    eps = bn.epsilon
    bn.set_weights([np.ones(channels), np.zeros(channels), np.zeros(channels), np.full(channels, 1.0 - eps)])
    return bn


def convert(model, method: str, *, dataset_size: int, layers=None, freeze: bool | None = None,
            slimming_strength: float = 1e-4, verbose: int = 1, **layer_kwargs) -> keras.Model:
    """The Bayesian counterpart of a trained Sequential / Functional model, keeping its weights.

    Args:
        model: the trained model.
        method: one of ``"vcp"``, ``"dirichlet"``, ``"sbp"``, ``"sparse_vd"``, ``"bc"``, ``"slimming"``.
        dataset_size: the number of training examples (the KL is divided by it).
        layers: optional names of the Conv2D / Dense layers to make Bayesian (default: all).
        freeze: Dirichlet only: train only the switches (default True).
        slimming_strength: L1 strength on BN gammas for ``"slimming"``.
        verbose: how the report is shown (`tfcompress.report.CompressionReport.emit`): 0 not at
            all, 1 one log record (a warning when a layer named in ``layers`` is left alone), 2
            printed.
        **layer_kwargs: passed to the Bayesian layers (``prior_stddev``, ``threshold``, ...).

    Returns:
        The Bayesian model. Its ``compression_report`` lists every Conv2D / Dense (and, for
        ``vcp`` / ``slimming``, BatchNormalization): converted (to which layer), or skipped with
        the reason (an output layer, not in ``layers``, an activation no gate folds through).

    Example:

    >>> import keras
    >>> from tfcompress import bayesian
    >>> x = keras.Input((8,))
    >>> h = keras.layers.Dense(6, activation="relu", name="fc1")(x)
    >>> h = keras.layers.Dense(6, activation="sigmoid", name="fc2")(h)
    >>> model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    >>> sbp = bayesian.convert(model, "sbp", dataset_size=100, verbose=0)
    >>> [(row.layer, row.action) for row in sbp.compression_report.rows]
    [('fc1', 'converted'), ('fc2', 'skipped'), ('out', 'skipped')]
    """
    verbose = check_verbose(verbose, "bayesian.convert")
    if method not in METHODS:
        raise TfcompressError(f"unknown method {method!r}", "convert", f"use one of {METHODS}")
    graph = trace(model, where="bayesian.convert")
    output_layers = {id(graph.producer(t).op) for t in graph.outputs if graph.producer(t) is not None}
    chosen = (lambda layer: True) if layers is None else (lambda layer: layer.name in layers)
    bn_method = method in ("vcp", "slimming")
    rows: dict[int, tuple] = {}  # layer id -> its report row

    def row(layer, action: str, reason: str, fix: str = "", important: bool = False) -> None:
        rows[id(layer)] = (layer.name, type(layer).__name__, action, reason, fix, important)

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

    def switch_for(producer):
        return (DirichletSwitch(dataset_size=dataset_size, name=f"{producer.name}_switch", **layer_kwargs)
                if method == "dirichlet" else
                LogNormalDropout(dataset_size=dataset_size, name=f"{producer.name}_sbp", **layer_kwargs))

    def replace(node, args, kwargs):
        layer = node.op
        rank = len(graph.shape(node.outputs[0]))
        if bn_method and _is_batch_norm(layer):
            new = make_bn(source_bn=layer, rank=rank)
            penalty = " with a NetworkSlimming penalty" if method == "slimming" else ""
            row(layer, "converted", f"to {type(new).__name__}{penalty}")
            return new(*args, **kwargs)
        if _is_producer(layer) and not chosen(layer):
            row(layer, SKIPPED, "not in layers=", "add its name to layers= to make it Bayesian")
        elif _is_producer(layer) and id(layer) in output_layers:
            row(layer, SKIPPED, "its units are model outputs (they are never pruned)", "",
                important=layers is not None and layer.name in layers)
        if _is_producer(layer) and chosen(layer) and id(layer) not in output_layers:
            config = layer.get_config()
            activation = config.get("activation", "linear")
            users = graph.consumers(node.output)
            followed_by_bn = len(users) == 1 and _is_batch_norm(users[0].op)
            if bn_method and not followed_by_bn:
                config["activation"] = "linear"
                out = call_copy(node, args, kwargs, layer=layer.__class__.from_config(config))
                new = make_bn(channels=int(layer.get_weights()[0].shape[-1]), name=f"{layer.name}_bn", rank=rank)
                row(layer, "converted", f"{type(new).__name__} {new.name} added after it")
                out = new(out)
                return keras.layers.Activation(activation, name=f"{layer.name}_activation")(out)
            if method in ("sparse_vd", "bc"):
                dense = _is_dense(layer)
                cls = {("sparse_vd", True): VariationalDense, ("sparse_vd", False): VariationalConv2D,
                       ("bc", True): BCDense, ("bc", False): BCConv2D}[(method, dense)]
                common = {"dataset_size": dataset_size, "activation": activation,
                          "use_bias": config.get("use_bias", True), "name": layer.name, **layer_kwargs}
                new_layer = (cls(layer.units, **common) if dense else
                             cls(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding, **common))
                row(layer, "converted", f"to {cls.__name__}")
                out = new_layer(*args, **kwargs)
                weights = layer.get_weights()
                new_layer.kernel.assign(weights[0])
                if len(weights) > 1 and new_layer.bias is not None:
                    new_layer.bias.assign(weights[1])
                return out
            out = call_copy(node, args, kwargs)
            if method in ("dirichlet", "sbp") and not followed_by_bn:
                if activation in ("relu", "linear"):
                    gate = switch_for(layer)
                    row(layer, "converted", f"{type(gate).__name__} {gate.name} added after it")
                    out = gate(out)
                else:
                    # a gate >= 0 folds into the producer only through ReLU / linear (strip needs
                    # that): an SE block's sigmoid or a SiLU layer stays deterministic
                    row(layer, SKIPPED, f"activation {activation!r}: a {method} gate folds back into a layer "
                        "only through ReLU or linear", "split the activation off, or leave it deterministic",
                        important=layers is not None)
            elif not bn_method and method in ("dirichlet", "sbp"):
                row(layer, "converted", f"a {method} gate after its BatchNormalization")
            return out
        if method in ("dirichlet", "sbp") and _is_batch_norm(layer):
            # the switch goes after the BatchNormalization that follows a producer
            source = graph.producer(node.inputs[0])
            out = call_copy(node, args, kwargs)
            producer = source.op if source is not None else None
            if producer is not None and _is_producer(producer) and chosen(producer) and id(producer) not in output_layers:
                out = switch_for(producer)(out)
            return out
        return None

    converted = rebuild(graph, replace, name=f"{model.name}_{method}")
    if method == "dirichlet" and (freeze is None or freeze):
        freeze_all_but_switches(converted)
    report = CompressionReport("bayesian.convert")
    for layer in graph.layers():
        if id(layer) in rows:
            report.add(*rows[id(layer)][:5], important=rows[id(layer)][5])
    report.emit(verbose)
    return attach(converted, report)


def _slimming_keep(bn, threshold: float) -> np.ndarray:
    return np.abs(keras.ops.convert_to_numpy(bn.gamma)) > threshold


def structure(model, *, slimming_threshold: float | None = None) -> dict[str, dict[str, Any]]:
    """The channels each Bayesian layer keeps: ``{layer: {"kept", "total", "keep_mask"}}``.

    Bayesian Compression layers (``BCDense`` / ``BCConv2D``) also report ``"bit_precision"``:
    the bits per weight their kept weights need (``BCDense.bit_precision``; None when the layer
    keeps nothing).

    For a ``slimming`` model (plain BatchNormalization with a NetworkSlimming penalty), pass
    ``slimming_threshold``: channels with |gamma| at or below it are dropped.

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8,))
        >>> dense = keras.Model(x, keras.layers.Dense(4, name="out")(keras.layers.Dense(16, "relu", name="fc1")(x)))
        >>> model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=100, verbose=0)
        >>> structure(model)["fc1_sbp"]["kept"], structure(model)["fc1_sbp"]["total"]
        (16, 16)
    """
    out: dict[str, dict[str, Any]] = {}
    # recursive, as prune_to: a Bayesian model inside another (a Distiller's student) is found too
    for layer in iter_layers(model):
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

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8,))
        >>> dense = keras.Model(x, keras.layers.Dense(4, name="out")(keras.layers.Dense(16, "relu", name="fc1")(x)))
        >>> model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=100, verbose=0)
        >>> plain = strip(model)
        >>> sorted({type(layer).__name__ for layer in plain.layers} - {"InputLayer"})
        ['Dense']
        >>> import numpy as np
        >>> data = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
        >>> bool(np.allclose(plain.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-5))
        True
    """
    graph = trace(model, where="bayesian.strip")
    unfreeze = any(isinstance(node.op, DirichletSwitch) for node in graph.nodes)

    def source_of(node):
        parent = graph.producer(node.inputs[0]) if node.inputs else None
        return parent.op if parent is not None else None

    # channel factors to fold into producers: producer name -> per-channel factor
    factors: dict[str, np.ndarray] = {}
    sources: dict[str, Any] = {}  # layer name -> the layer feeding it
    for node in graph.nodes:
        layer = node.op
        source = source_of(node)
        if source is not None:
            sources[layer.name] = source
        if isinstance(layer, DirichletSwitch | LogNormalDropout):
            if source is not None and _is_batch_norm(source):
                factors[source.name] = layer.channel_scale()
            elif source is None or not _is_producer(source) or \
                    getattr(source.activation, "__name__", "linear") not in ("relu", "linear"):
                raise TfcompressError(f"{layer.name} does not follow a Conv2D / Dense with a ReLU or linear activation",
                                      layer.name, "place switches right after such layers")
            else:
                factors[source.name] = layer.channel_scale()
        if isinstance(layer, VariationalBatchNormalization) or (
                slimming_threshold is not None and _is_batch_norm(layer)
                and isinstance(getattr(layer, "gamma_regularizer", None), NetworkSlimming)):
            keep = layer.keep_mask() if isinstance(layer, VariationalBatchNormalization) else \
                _slimming_keep(layer, slimming_threshold)
            if source is not None and _is_producer(source):
                factors.setdefault(source.name, np.ones(keep.size))
                factors[source.name] = factors[source.name] * keep
    built = []

    def replace(node, args, kwargs):
        layer = node.op
        if isinstance(layer, DirichletSwitch | LogNormalDropout):
            return args[0]  # folded into the producer
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
        elif node.is_layer:
            new = copy_layer(layer)
            if _is_batch_norm(new) and new.gamma_regularizer is not None:
                new.gamma_regularizer = None
            weights = layer.get_weights()
        else:
            return None
        if unfreeze:
            new.trainable = True
        out = new(*args, **kwargs)
        if new.weights:
            if layer.name in factors and _is_producer(layer):
                factor = factors[layer.name]
                weights = [weights[0] * factor] + ([weights[1] * factor] if len(weights) > 1 else [])
            elif layer.name in factors and _is_batch_norm(layer):
                factor = factors[layer.name]  # a switch after BN: scale gamma and beta
                weights = [weights[0] * factor, weights[1] * factor, *weights[2:]]
            new.set_weights(weights)
        built.append(new)
        return out

    stripped = rebuild(graph, replace, name=model.name)
    # zero the producer channels whose BN output is forced to zero, so shrink sees them dead
    by_name = {layer.name: layer for layer in built}
    for layer in built:
        if _is_batch_norm(layer):
            gamma, beta = layer.get_weights()[:2]
            dead = (gamma == 0) & (beta == 0)
            source = sources.get(layer.name)
            if dead.any() and source is not None and source.name in by_name and _is_producer(by_name[source.name]):
                w = by_name[source.name].get_weights()
                w[0][..., dead] = 0
                if len(w) > 1:
                    w[1][dead] = 0
                by_name[source.name].set_weights(w)
    return stripped


register_stripper(lambda layer: getattr(layer, "tfcompress_bayesian", False), strip)
