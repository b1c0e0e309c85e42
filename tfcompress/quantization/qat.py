"""Quantization-aware training that exports exactly to full-int8 TFLite (tfmot's ``quantize_model`` for Keras 3).

``quantize(model)`` rebuilds a Sequential or Functional model so that training sees what the
int8 TFLite kernels will compute (Jacob et al., CVPR 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", sec. 3 and eq. 1-3):

* the input and every activation that TFLite stores (outputs of conv / dense blocks, of Add and
  Concatenate, of standalone activations) pass through :class:`ActivationQuantizer`: per-tensor
  asymmetric int8, the range [min, max] tracked by an exponential moving average of the batch
  minima and maxima (Jacob et al., sec. 3.1), applied with ``tf.quantization.fake_quant_with_min_max_vars``
  (a straight-through estimator for the gradient), the op the TFLite converter reads its
  scale and zero point from;
* Conv2D / DepthwiseConv2D / Dense are wrapped in :class:`QuantizedLayer`, which folds a
  following BatchNormalization into the kernel and bias the way the converter does
  (W' = W gamma / sqrt(var + eps), b' = beta + (b - mean) gamma / sqrt(var + eps); Krishnamoorthi
  2018, "Quantizing deep convolutional networks for efficient inference: A whitepaper", sec. 3.2,
  eq. 13-14, with the moving statistics frozen during QAT), fuses a following ReLU / ReLU6, and
  fake-quantizes the folded kernel per output channel, symmetric, narrow range [-127, 127]
  (scale = max|W'_c| / 127), which is what the converter does with the float kernel.

At export (`tfcompress.export.to_tflite` detects a QAT model and uses no calibration data) the
weight fake-quant is left out of the traced graph: the converter quantizes the folded float
kernel with the same per-channel formula, and takes every activation's scale from the learned
ranges. The int8 model then computes what the QAT model computes. The QAT forward pass rounds as
the int8 reference kernels (TFLite Micro's) do: weights rounded in float64 with ties away from
zero, biases on the int32 grid ``s_in s_w``, the accumulator rescaled with gemmlowp's double
rounding (in int64: exact), average pools averaged on their input's grid and then requantized,
inputs rounded as the runtime quantizes them, and the ops between quantizers computed on their
operands' int8 levels as their kernels compute them (`tfcompress.layers.int8_kernels`: ADD with
its fused ReLU, MUL, MEAN, HARD_SWISH, LOGISTIC, swish as LOGISTIC then MUL, SOFTMAX); a mean over
one position has no quantizer (the converter drops it). The float path gives the gradient
(straight-through). Deep random-weight networks (MobileNetV1 / V2 / V3Small, EfficientNetB0,
ResNet8, DS-CNN) then export bit-exact on TFLM and LiteRT's reference kernels. LiteRT's default
XNNPACK delegate rounds some ops differently (its convolutions, MUL and MEAN requantize once in
float32, its ADD and int8 QUANTIZE use their own fixed-point multipliers): one value per output
can equal only one of the two, so the QAT model computes XNNPACK's arithmetic instead inside
``tfcompress.quantization.kernel_arithmetic("xnnpack")`` (`tfcompress.layers.xnnpack_kernels`,
x86-64), and is then bit-exact with the file on XNNPACK too. LiteRT's builtin (optimized) kernels
(``delegate="none"``) are a third arithmetic, not reproduced (``benchmarks/qat_diff.py``,
RESULTS.md).

Ranges TFLite requires to be equal are shared: int8 CONCATENATION, MAXIMUM and MINIMUM need
their inputs and output on one scale and zero point (TFLite 8-bit quantization specification,
"restriction: input and outputs must all have same scale/zero_point"; tfmot's QAT quantizes
only the concatenation's output for the same reason). ``quantize`` groups those tensors (through
pass-through layers such as MaxPooling2D, Flatten, Reshape back to the layer that produces
them) and quantizes every member with one :class:`SharedRangeQuantizer`, whose range is the
union of the members' moving-average ranges. Each member is rounded once, on the grid the int8
kernel writes it on, so the exported file needs no requantizing QUANTIZE op and no rescaling.

Options: ``skip_layers`` leaves named layers in float (their export then needs
``allow_float_fallback``); ``start_step`` keeps fake quantization off (ranges still tracked)
for the first N training steps; ``preserve_sparsity`` keeps the kernel's zeros exactly zero
(pruning-preserving QAT, as tfmot's PQAT) and its other weights non-zero (a kept weight below half
an int8 step is set to one step, which tfmot's PQAT does not do), so the int8 file has exactly the
pruned model's zeros.
"""

from __future__ import annotations

import logging
from typing import Any

import keras

from tfcompress.core import (
    FUSABLE_ACTIVATIONS,
    UnionFind,
    UnknownLayerError,
    activation_name,
    call_copy,
    copy_layer,
    handler_for,
    iter_layers,
    rebuild,
    trace,
)
from tfcompress.core.strip import strip_all
from tfcompress.errors import TfcompressError
from tfcompress.layers.fake_quant import (
    ActivationQuantizer,
    QuantizedLayer,
    SharedRangeQuantizer,
    averages_one_value,
    export_mode,
    exporting,
    fake_quant_per_channel,
    fused_relu,
)
from tfcompress.report import attach, check_verbose

# the layers and the export switch are defined in tfcompress.layers.fake_quant
__all__ = [
    "ActivationQuantizer",
    "QuantizedLayer",
    "SharedRangeQuantizer",
    "export_mode",
    "exporting",
    "fake_quant_per_channel",
    "quantize",
]

logger = logging.getLogger("tfcompress")


def _fused_activation(layer) -> str | None:
    """The activation a conv / dense kernel fuses when ``layer`` follows it (TFLite fuses ReLU and
    ReLU6), or None."""
    if handler_for(layer).qat != "activation":
        return None
    if isinstance(layer, keras.layers.ReLU):
        return fused_relu(layer)
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", None)
        return name if name in FUSABLE_ACTIVATIONS else None
    return None


def quantize(model, *, skip_layers: tuple[str, ...] | list[str] = (), start_step: int = 0,
             preserve_sparsity: bool = False, ema_decay: float = 0.99, verbose: int = 1) -> keras.Model:
    """A quantization-aware copy of ``model`` (tfmot's ``quantize_model``), with its weights.

    Args:
        model: a built Sequential or Functional model.
        skip_layers: names of layers to leave in float.
        start_step: training steps before fake quantization switches on.
        preserve_sparsity: keep every kernel zero exactly zero (pruning-preserving QAT).
        ema_decay: decay of the activation ranges' moving averages.
        verbose: how its report is shown (`tfcompress.report.CompressionReport.emit`): 0 not at
            all, 1 one log record (a warning when ``skip_layers`` leaves layers in float), 2 printed.

    Returns:
        A Functional model; train it, then ``to_tflite(qat_model, path, "int8")``. The inputs
        and output of every Concatenate / Maximum / Minimum share one `SharedRangeQuantizer`
        (named ``quantize_<first such layer>``), as the int8 TFLite kernels require. Its
        ``compression_report`` lists what QAT did to each layer (quantized, folded, fused, range)
        and the layers it left in float (``tfcompress.quantization.report``).

    Example:
        >>> import numpy as np
        >>> from tfcompress.export import to_tflite
        >>> x = keras.Input((8,))
        >>> model = keras.Model(x, keras.layers.Dense(4, name="fc")(keras.layers.Dense(8, "relu", name="hidden")(x)))
        >>> qat = quantize(model, verbose=0)
        >>> sum(isinstance(layer, QuantizedLayer) for layer in qat.layers)      # each Dense, int8 kernel
        2
        >>> data = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> qat.compile("adam", "mse")
        >>> _ = qat.fit(data, data[:, :4], epochs=1, batch_size=16, verbose=0)    # learns the int8 ranges
        >>> to_tflite(qat, "qat_int8.tflite", "int8").int8_coverage               # ranges from QAT, no calibration
        1.0
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise TfcompressError("quantize needs a built Sequential or Functional model",
                              getattr(model, "name", "model"), "build it with keras.Input first")
    verbose = check_verbose(verbose, "quantize")
    model = _swap_qat_equivalents(strip_all(model))
    if any(getattr(layer, "tfcompress_fake_quant", False) for layer in iter_layers(model)):
        raise TfcompressError("the model is already quantization-aware", model.name, "quantize the float model")
    graph = trace(model, where="quantize")
    names = {node.name for node in graph.nodes}
    unknown = sorted(set(skip_layers) - names)
    if unknown:
        raise TfcompressError(f"skip_layers names unknown layers {unknown}", "skip_layers", f"layers are {sorted(names)}")
    skip = set(skip_layers)
    roles = {id(node): _role(node, skip, graph) for node in graph.nodes}
    absorbed: dict[int, int] = {}  # absorbed node output -> the tensor id that replaces it
    plans: dict[int, dict] = {}
    for node in graph.nodes:
        layer = node.op
        if roles[id(node)] != "kernel" or layer.name in skip:
            continue
        plan = {"batch_norm": None, "activation": "linear", "last": node.output, "split": None}
        inner_act = activation_name(layer) or "linear"
        if inner_act not in FUSABLE_ACTIVATIONS:
            # TFLite runs it as its own op after the kernel (SOFTMAX, LOGISTIC, ...): so does QAT
            plan["split"] = inner_act
            plans[node.output] = plan
            continue
        nxt = graph.single_consumer(node.output)
        if (inner_act == "linear" and nxt is not None and _folds_into_kernel(nxt, graph)
                and nxt.name not in skip):
            plan["batch_norm"] = nxt.op
            absorbed[nxt.output] = node.output
            plan["last"] = nxt.output
            nxt = graph.single_consumer(nxt.output)
        if inner_act == "linear" and nxt is not None and _fused_activation(nxt.op) and nxt.name not in skip:
            plan["activation"] = _fused_activation(nxt.op)
            absorbed[nxt.output] = node.output
            plan["last"] = nxt.output
        plans[node.output] = plan

    shared = _shared_ranges(graph, roles, absorbed, skip, ema_decay, start_step)

    def quantize_input(tid, tensor):
        if tid in shared:
            quantizer, member = shared[tid]
            return quantizer(tensor, member=member)
        return ActivationQuantizer(ema_decay, start_step, name=f"quantize_{graph.tensors[tid].name}")(tensor)

    new_tensors: dict[int, Any] = {}

    def replace(node, args, kwargs):
        layer = node.op
        if node.output in absorbed:
            return new_tensors[absorbed[node.output]]
        if node.output in plans:
            plan = plans[node.output]
            split = plan["split"]
            if split is None:
                fresh = copy_layer(layer)
            else:
                config = layer.get_config()
                config["activation"] = "linear"
                fresh = layer.__class__.from_config(config)
            bn = plan["batch_norm"]
            fresh_bn = copy_layer(bn) if bn is not None else None
            q = QuantizedLayer(fresh, fresh_bn, plan["activation"], preserve_sparsity, ema_decay, start_step,
                               quantize_output=node.output not in shared or split is not None,
                               name=f"quant_{layer.name}")
            out = q(*args, **kwargs)
            if split is not None:
                out = keras.layers.Activation(split, name=f"{layer.name}_{split}")(out)
            if node.output in shared:
                quantizer, member = shared[node.output]
                out = quantizer(out, member=member)
            elif split is not None:
                out = _output_quantizer(split, ema_decay, start_step, f"quantize_{layer.name}")(out)
            fresh.set_weights(layer.get_weights())
            if fresh_bn is not None:
                fresh_bn.set_weights(bn.get_weights())
            q.set_sparsity_mask_from_kernel()
            new_tensors[node.output] = out
            return out
        out = call_copy(node, args, kwargs)
        role = roles[id(node)]
        if layer.name in skip:
            pass  # stays in float: a "skipped" row of the report
        elif node.output in shared:
            quantizer, member = shared[node.output]
            out = quantizer(out, member=member)
        elif role != "pass" and not _fuses_next_activation(node, graph, skip, shared):
            out = _output_quantizer(activation_name(layer) or type(layer).__name__.lower(), ema_decay, start_step,
                                    f"quantize_{layer.name}")(out)
        new_tensors[node.output] = out
        return out

    qat = rebuild(graph, replace, name=f"{model.name}_qat", input_transform=quantize_input)
    from tfcompress.quantization.report import quantization_report

    report = quantization_report(model, qat, skip)
    report.emit(verbose)
    return attach(qat, report)


# Outputs whose int8 quantization TFLite fixes (8-bit quantization specification): SOFTMAX and
# LOGISTIC scale 1/256 zero point -128, TANH 1/128 and 0, LOG_SOFTMAX 16/256 and 127.
_FIXED_OUTPUT_RANGES = {
    "softmax": (0.0, 255 / 256),
    "sigmoid": (0.0, 255 / 256),
    "tanh": (-1.0, 127 / 128),
    "log_softmax": (-255 * 16 / 256, 0.0),
}


def _output_quantizer(activation: str, ema_decay: float, start_step: int, name: str) -> ActivationQuantizer:
    """The quantizer of an op's int8 output: TFLite's fixed range for softmax / sigmoid / tanh /
    log-softmax, else a tracked range."""
    return ActivationQuantizer(ema_decay, start_step, fixed_range=_FIXED_OUTPUT_RANGES.get(activation), name=name)


def _fuses_next_activation(node, graph, skip: set[str], shared: dict) -> bool:
    """An Add whose only consumer is a ReLU / ReLU6: TFLite fuses the activation into the int8 ADD,
    which rounds once, onto the activation's range; a quantizer between them would round twice
    (ResNet's ``add -> relu``: 1 LSB off on some outputs, compounding over the stacks)."""
    if type(node.op).__name__ != "Add" or node.output in shared or node.name in skip:
        return False
    nxt = graph.single_consumer(node.output)
    return nxt is not None and nxt.name not in skip and _fused_activation(nxt.op) is not None \
        and nxt.output not in shared


def _swap_qat_equivalents(model):
    """``model`` with each layer whose handler offers a QAT equivalent replaced by it (an input
    ``Rescaling`` becomes a 1x1 DepthwiseConv2D: exact in int8, where the converter leaves a
    MUL / ADD by float constants in float); ``model`` itself when there is none (no rebuild)."""
    graph = trace(model, where="quantize")
    equivalents = {}
    for node in graph.nodes:
        if node.is_layer and len(node.inputs) == 1:
            equivalent = handler_for(node.op).qat_equivalent(node.op, graph.shape(node.inputs[0]))
            if equivalent is not None:
                equivalents[id(node)] = equivalent
    if not equivalents:
        return model
    logger.info("quantize: %s computed as 1x1 depthwise convolutions, exact in int8",
                ", ".join(node.name for node in graph.nodes if id(node) in equivalents))
    return rebuild(graph, lambda node, args, kwargs: equivalents[id(node)](*args, **kwargs)
                   if id(node) in equivalents else None)


def _role(node, skip: set[str], graph) -> str:
    """The node's QAT role from its handler (``tfcompress.core.registry.QAT_ROLES``); a mean over
    one position is ``"pass"`` (the converter drops the MEAN and its fake-quant: the next op reads
    its input's int8 tensor)."""
    handler = handler_for(node.op)
    if len(node.inputs) == 1 and averages_one_value(node.op, graph.shape(node.inputs[0])):
        return "pass"
    if not handler.known and node.name not in skip:
        raise UnknownLayerError(node.op, "quantize", "QAT needs to know how TFLite computes it")
    if handler.qat == "refuse" and node.name not in skip:
        raise TfcompressError(f"quantize cannot make {type(node.op).__name__} exact in int8: {handler.qat_reason}",
                              f"layer {node.name!r}", "replace the layer, or leave it in float with "
                              "skip_layers=[...] and export with allow_float_fallback=True")
    if handler.qat == "activation" and not _fused_activation(node.op):
        return "range"
    if handler.qat == "kernel" and getattr(node.op, "groups", 1) != 1:
        return "range"
    return handler.qat


def _folds_into_kernel(node, graph) -> bool:
    """A BatchNormalization on the channel axis right after a kernel layer: folded into it."""
    layer = node.op
    return isinstance(layer, keras.layers.BatchNormalization) and \
        layer.axis in (-1, len(graph.shape(node.output)) - 1)


def _shared_ranges(graph, roles: dict[int, str], absorbed: dict[int, int], skip: set[str], ema_decay: float,
                   start_step: int) -> dict[int, tuple[SharedRangeQuantizer, int]]:
    """Tensor id -> (its group's `SharedRangeQuantizer`, member index), for the tensors that
    TFLite needs on one scale: a Concatenate / Maximum / Minimum's output and inputs (QAT role
    ``"same_range"``), each input followed back through pass-through layers (role ``"pass"``:
    MaxPooling2D, Flatten, ...: same scale in TFLite) and absorbed BatchNormalization /
    activation layers to the tensor that gets quantized. Groups chain: a concatenation of
    concatenations is one group. Outputs of ``skip_layers`` stay float and out of groups."""

    def owner(tid: int) -> int:
        while True:
            tid = absorbed.get(tid, tid)
            node = graph.producer(tid)
            if node is None or roles[id(node)] != "pass" or len(node.inputs) != 1:
                return tid
            tid = node.inputs[0]

    def floating(tid: int) -> bool:
        node = graph.producer(tid)
        return node is not None and node.name in skip

    def same_range(node) -> bool:
        return node is not None and roles[id(node)] == "same_range"

    groups = UnionFind()
    members_seen: set[int] = set()
    for node in graph.nodes:
        if not same_range(node) or node.name in skip:
            continue
        members = [m for m in [node.output, *(owner(t) for t in node.inputs)] if not floating(m)]
        for m in members:
            members_seen.add(m)
            groups.union(m, members[0])
    order = [*graph.inputs, *(t for node in graph.nodes for t in node.outputs)]
    by_root: dict[int, list[int]] = {}
    for tid in order:
        if tid in members_seen:
            by_root.setdefault(groups.find(tid), []).append(tid)
    shared: dict[int, tuple[SharedRangeQuantizer, int]] = {}
    for members in by_root.values():
        if len(members) < 2:
            continue
        # every group holds the output of the (first) layer that asked for it: name it after that
        first = next(graph.producer(m).name for m in members if same_range(graph.producer(m)))
        quantizer = SharedRangeQuantizer(len(members), ema_decay, start_step, name=f"quantize_{first}")
        for index, tid in enumerate(members):
            shared[tid] = (quantizer, index)
    return shared
