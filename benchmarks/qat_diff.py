"""Op-by-op comparison of a QAT model with its int8 TFLite export (issue "every step on every real
architecture", QAT part).

    python benchmarks/qat_diff.py NET [--samples N] [--steps S] [--out DIR] [--no-tflm]

NET is ``mobilenet_v1`` (96x96x3), ``mobilenet_v2`` (keras.applications, 32x32x3), ``resnet8``,
``ds_cnn`` or ``lenet``. The random-weight net gets its BatchNormalization statistics from random
inputs (`recalibrate_batchnorm`), is quantized, runs ``--steps`` training-mode batches to set the
ranges and is exported to int8. Then every intermediate int8 tensor of the file (LiteRT reference
kernels, all tensors preserved) is compared with the QAT Keras tensor that fake-quantized it (the
outputs of every quantizer layer, matched by scale and zero point, then by shape and by order),
in LSB of that tensor's scale. The first tensor beyond 1 LSB is printed. The output agreement on
LiteRT and TFLM is measured as in ``tests/test_qat.py::lsb_agreement`` (TFLM in a subprocess:
``Interpreter.from_bytes`` can abort the process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# nets whose first layers rescale raw pixels themselves (Rescaling, Normalization): inputs in 0..255
RAW_PIXELS = {"mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_b0"}


def build(net: str) -> tuple[keras.Model, tuple[int, ...]]:
    """The random-weight net (seed 0): MobileNetV1 at 96x96x3, the keras.applications nets at
    32x32x3 with 10 classes and their own heads, the other MLPerf Tiny nets at their reference sizes."""
    import tfcompress.zoo

    keras.utils.set_random_seed(0)
    if net == "mobilenet_v1":
        model = tfcompress.zoo.mobilenet_v1(input_shape=(96, 96, 3))
    elif net in tfcompress.zoo.APPLICATIONS:
        model = tfcompress.zoo.applications(net, (32, 32, 3))
    elif net in ("resnet8", "ds_cnn"):
        model = tfcompress.zoo.ZOO[net]()
    else:
        raise SystemExit(f"unknown net {net!r}: mobilenet_v1, resnet8, ds_cnn or one of "
                         f"{sorted(tfcompress.zoo.APPLICATIONS)}")
    return model, tuple(model.input_shape[1:])


def prepare(net: str, samples: int, steps: int, out: Path, seed: int = 0):
    import tfcompress
    import tfcompress.export
    import tfcompress.zoo
    from tfcompress.batchnorm import recalibrate_batchnorm

    model, shape = build(net)
    rng = np.random.default_rng(seed)
    high = 255.0 if net in RAW_PIXELS else 1.0
    x = rng.uniform(0, high, (samples, *shape)).astype("float32")
    recalibrate_batchnorm(model, x)
    qat = tfcompress.quantize(model)
    for _ in range(steps):
        batch = rng.uniform(0, high, (32, *shape)).astype("float32")
        qat(batch, training=True)
    path = out / f"{net}_qat.tflite"
    tfcompress.export.to_tflite(qat, path, "int8")
    return qat, path, x


def quantizer_outputs(qat: keras.Model):
    """(layer name, keras tensor, scale, zero point) for every quantizer's output, in graph order."""
    from tfcompress.layers.fake_quant import (
        ActivationQuantizer,
        QuantizedLayer,
        SharedRangeQuantizer,
    )

    found = []
    for layer in qat.layers:
        quantizer = None
        if isinstance(layer, QuantizedLayer):
            quantizer = layer.output_quantizer
        elif isinstance(layer, ActivationQuantizer | SharedRangeQuantizer):
            quantizer = layer
        if quantizer is None:
            continue
        scale, zero = quantizer.scale_and_zero_point()
        for node_index, node in enumerate(layer._inbound_nodes):
            for tensor in keras.tree.flatten(node.output_tensors):
                found.append((f"{layer.name}#{node_index}" if len(layer._inbound_nodes) > 1 else layer.name,
                              tensor, scale, zero))
    return found


def compare(qat: keras.Model, path: Path, x: np.ndarray) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from tfcompress.export.runtime import quantize as quantize_array
    from tfcompress.export.tflite_file import load_tflite
    from tfcompress.layers.fake_quant import QuantizedLayer

    parsed = load_tflite(path)
    interpreter = Interpreter(model_content=parsed.data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                              experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    ops = interpreter._get_ops_details()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    # the op outputs, in execution order
    produced = []
    producer = {}
    for op in ops:
        for t in op["outputs"]:
            produced.append((op["op_name"], details[t]))
            producer[t] = op
    tensors = quantizer_outputs(qat)
    probe = keras.Model(qat.inputs, [t for _, t, _, _ in tensors])
    keras_values = probe.predict(x, verbose=0, batch_size=16)
    if len(tensors) == 1:
        keras_values = [keras_values]
    lite_values: dict[int, list[np.ndarray]] = {}
    for i in range(len(x)):
        interpreter.set_tensor(inp["index"], quantize_array(x[i:i + 1], inp["dtype"], *inp["quantization"]))
        interpreter.invoke()
        for d in details.values():
            if d["index"] not in lite_values and d["index"] != inp["index"] and d["index"] not in producer:
                continue
            lite_values.setdefault(d["index"], []).append(interpreter.get_tensor(d["index"]).copy())
    # match: same scale / zero point and shape, in order
    used: set[int] = set()
    rows = []
    for (name, _tensor, scale, zero), value in zip(tensors, keras_values, strict=True):
        candidates = []
        for op_name, d in produced:
            q = d["quantization"]
            if d["index"] in used or not q[0]:
                continue
            if int(np.prod(d["shape"][1:])) != int(np.prod(value.shape[1:])):  # MEAN keeps dims the Keras tensor drops
                continue
            if abs(q[0] - scale) <= 1e-5 * scale and q[1] == zero:
                candidates.append((op_name, d))
        # fixed-range outputs (1/256 for every LOGISTIC and SOFTMAX) share one scale: prefer the
        # tensor named after the Keras layer (quantize_x quantizes layer x, or its split x_sigmoid)
        layer_name = name.split("#")[0].removeprefix("quantize_").removeprefix("quant_")
        named = [c for c in candidates if f"/{layer_name}_" in c[1]["name"] or f"/{layer_name}" in c[1]["name"]]
        best = (named or candidates or [None])[0]
        if best is None:
            rows.append({"keras": name, "tflite": None, "scale": scale, "zero_point": zero})
            continue
        op_name, d = best
        used.add(d["index"])
        lite = (np.concatenate(lite_values[d["index"]]).astype(np.float32) - d["quantization"][1]) * d["quantization"][0]
        lite = lite.reshape(value.shape)
        lsb = np.abs(lite - value) / d["quantization"][0]
        row = {"keras": name, "tflite": d["name"], "op": op_name, "shape": list(value.shape[1:]),
               "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1]),
               "max_lsb": float(lsb.max()), "within_1lsb": float((lsb <= 1.001).mean()),
               "mean_lsb": float(lsb.mean())}
        # local: the Keras layer on the file's own (dequantized) input, so propagation is left out
        # (a conv / dense layer only: a quantizer's input is not its file op's input)
        layer = qat.get_layer(name.split("#")[0])
        source = producer[d["index"]]["inputs"][0]
        if source in lite_values and isinstance(layer, QuantizedLayer):
            sd = details[source]
            given = (np.concatenate(lite_values[source]).astype(np.float32) - sd["quantization"][1]) * \
                sd["quantization"][0] if sd["quantization"][0] else np.concatenate(lite_values[source])
            try:
                given = given.reshape((-1, *layer.input.shape[1:]))
                local = keras.ops.convert_to_numpy(layer(given, training=False)).reshape(lite.shape)
                local_lsb = np.abs(lite - local) / d["quantization"][0]
                row.update(local_max_lsb=float(local_lsb.max()), local_within_1lsb=float((local_lsb <= 1.001).mean()),
                           local_exact=float((local_lsb < 0.5).mean()))
            except Exception as exc:  # the file's op input is not the layer's input (shapes differ)
                row["local_error"] = f"{type(exc).__name__}"
        rows.append(row)
    # the file's ops whose outputs no Keras quantizer matched (a requantizing op, an extra rounding)
    unmatched = [(op_name, d["name"]) for op_name, d in produced if d["index"] not in used]
    return rows, unmatched


TFLM_CHILD = r"""
import sys, json, numpy as np
from tfcompress.export.micro import make_tflm_interpreter
from tfcompress.export.tflite_file import load_tflite
from tfcompress.export.runtime import ModelRunner
path, xs, arena = sys.argv[1], sys.argv[2], int(sys.argv[3])
parsed = load_tflite(path)
runner = ModelRunner(path)
x = np.load(xs)
interpreter = make_tflm_interpreter(parsed.data, arena_size=arena)
out = []
for i in range(len(x)):
    interpreter.set_input(runner.quantize_input(x[i:i+1]), 0)
    interpreter.invoke()
    out.append(runner.dequantize_output(np.array(interpreter.get_output(0))))
np.save(xs + ".out.npy", np.concatenate(out))
"""


def output_agreement(qat, path: Path, x: np.ndarray, tflm: bool = True, arena: int = 4_000_000) -> dict:
    from tfcompress.export.runtime import ModelRunner
    from tfcompress.export.tflite_file import load_tflite

    parsed = load_tflite(path)
    scale = parsed.outputs[0].quantization.scales[0]
    keras_out = qat.predict(x, verbose=0)
    result, on = {}, {}
    # LiteRT as lsb_agreement runs it (XNNPACK), its builtin kernels, its reference kernels
    for label, kwargs in (("litert", {}), ("litert_builtin", {"delegate": "none"}),
                          ("litert_ref", {"reference_kernels": True})):
        on[label] = ModelRunner(path, **kwargs).predict(x)
        lsb = np.abs(on[label] - keras_out) / scale
        result.update({f"{label}_within_1lsb": float((lsb <= 1.001).mean()), f"{label}_exact": float((lsb < 0.5).mean()),
                       f"{label}_max_lsb": float(lsb.max())})
    # XNNPACK against the QAT model computing XNNPACK's own int8 arithmetic (x86-64)
    from tfcompress.quantization import kernel_arithmetic

    with kernel_arithmetic("xnnpack", qat):
        emulated = qat.predict(x, verbose=0)
    lsb = np.abs(on["litert"] - emulated) / scale
    result.update({"xnnpack_arith_within_1lsb": float((lsb <= 1.001).mean()),
                   "xnnpack_arith_exact": float((lsb < 0.5).mean()), "xnnpack_arith_max_lsb": float(lsb.max())})
    if tflm:
        with tempfile.TemporaryDirectory() as tmp:
            xs = str(Path(tmp) / "x.npy")
            np.save(xs, x)
            proc = subprocess.run([sys.executable, "-c", TFLM_CHILD, str(path), xs, str(arena)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                result["tflm_error"] = (proc.stderr or proc.stdout)[-500:]
            else:
                micro_lsb = np.abs(np.load(xs + ".out.npy") - keras_out) / scale
                result.update(tflm_within_1lsb=float((micro_lsb <= 1.001).mean()),
                              tflm_exact=float((micro_lsb < 0.5).mean()), tflm_max_lsb=float(micro_lsb.max()))
    return result


# ------------------------------------------------------------------- one int8 op per file, by kernel

def _single_op_models() -> dict[str, tuple[keras.Model, list[tuple[float, float]]]]:
    """One small model per int8 op (name -> (model, the uniform range of each input)): what each
    kernel computes, with no other op before it."""
    layers = keras.layers
    keras.utils.set_random_seed(0)

    def one(shape, body, ranges=((-1.0, 3.0),)):
        inputs = [keras.Input(shape) for _ in ranges]
        return keras.Model(inputs, body(*inputs)), list(ranges)

    two = ((-1.0, 3.0), (-2.5, 1.5))
    return {
        "CONV_2D": one((8, 8, 16), lambda x: layers.Conv2D(24, 3, padding="same")(x)),
        "DEPTHWISE_CONV_2D": one((8, 8, 16), lambda x: layers.DepthwiseConv2D(3, padding="same")(x)),
        "FULLY_CONNECTED": one((64,), lambda x: layers.Dense(48)(x)),
        "ADD": one((8, 8, 16), lambda a, b: layers.Add()([a, b]), two),
        "ADD + ReLU6 (x + 3)": one((8, 8, 16), lambda x: layers.ReLU(6.0)(x + 3.0)),
        "MUL": one((8, 8, 16), lambda a, b: layers.Multiply()([a, b]), two),
        "MUL (x / 6)": one((8, 8, 16), lambda x: x * (1.0 / 6.0)),
        "MEAN": one((8, 8, 16), lambda x: layers.GlobalAveragePooling2D(keepdims=True)(x)),
        "AVERAGE_POOL_2D": one((8, 8, 16), lambda x: layers.AveragePooling2D(2)(x)),
        "HARD_SWISH": one((8, 8, 16), lambda x: layers.Activation("hard_swish")(x), ((-4.0, 5.0),)),
        "LOGISTIC": one((8, 8, 16), lambda x: layers.Activation("sigmoid")(x), ((-6.0, 6.0),)),
        "LOGISTIC + MUL (swish)": one((8, 8, 16), lambda x: layers.Activation("swish")(x), ((-4.0, 5.0),)),
        "SOFTMAX": one((10,), lambda x: layers.Activation("softmax")(x), ((-4.0, 6.0),)),
    }


def _requantization_check(parsed, x: np.ndarray, outputs: dict) -> dict:
    """For a one-convolution file: the fraction of outputs where XNNPACK equals a single float32
    rounding, ``lrintf(acc * float32(s_in s_w / s_out)) + z``, where the reference kernels equal the
    fixed-point double rounding (`int8_kernels.requantize`), and how far from a half integer
    ``acc M`` is where the two kernels disagree (in LSB)."""
    import tensorflow as tf

    from tfcompress.layers import int8_kernels

    op = next(o for o in parsed.ops if o.name in ("CONV_2D", "DEPTHWISE_CONV_2D"))
    source, weights, bias = parsed.op_tensors(op)[:3]
    target = parsed.tensor(op.outputs[0], 0)
    kernel = np.transpose(parsed.constant_values(weights).astype(np.float64), (1, 2, 3, 0))  # -> HWIO / HWC1
    centred = x.astype(np.float64) - source.quantization.zero_points[0]
    conv = tf.nn.conv2d if op.name == "CONV_2D" else lambda v, k, s, p: tf.nn.depthwise_conv2d(v, k, [1, 1, 1, 1], p)
    acc = np.rint(conv(centred, kernel, 1, "SAME").numpy()).astype(np.int64) + parsed.constant_values(bias)
    s_in, s_out = np.float32(source.quantization.scales[0]), np.float32(target.quantization.scales[0])
    s_w = np.asarray(weights.quantization.scales, np.float32)
    zero = target.quantization.zero_points[0]
    single = np.clip(np.rint(acc.astype(np.float32) * (s_in * s_w / s_out).astype(np.float32)) + zero, -128, 127)
    multiplier = np.float64(s_in) * s_w.astype(np.float64) / np.float64(s_out)
    double = np.clip(int8_kernels.requantize(acc, multiplier).numpy() + zero, -128, 127)
    xnnpack, reference = outputs["xnnpack"].reshape(acc.shape), outputs["reference"].reshape(acc.shape)
    value = acc * multiplier
    apart = np.abs(value - np.floor(value) - 0.5)[xnnpack != reference]
    return {"xnnpack_equals_fp32_single_rounding": float((xnnpack == single).mean()),
            "reference_equals_fixed_point": float((reference == double).mean()),
            "disagreements_max_distance_to_half_lsb": float(apart.max()) if apart.size else None}


def _levels(qat, inputs, scale, zero, shape):
    """The QAT model's output levels on each sample of ``inputs``."""
    return np.stack([np.round(np.asarray(qat(x if len(x) > 1 else x[0], training=False)) / scale) + zero
                     for x in inputs]).astype(np.int64).reshape(shape)


def kernel_table(samples: int = 64, out: Path | None = None) -> list[dict]:
    """For every single-op model: the fraction of int8 outputs on which LiteRT's XNNPACK, LiteRT's
    builtin (optimized) kernels and TFLM differ from LiteRT's reference kernels, and from the QAT
    model, on the same random int8 inputs (every level equally likely)."""
    import tfcompress
    import tfcompress.export
    from tfcompress.export.micro import make_tflm_interpreter
    from tfcompress.export.runtime import ModelRunner
    from tfcompress.quantization import kernel_arithmetic

    out = out or Path(tempfile.mkdtemp(prefix="qat_kernels_"))
    rng = np.random.default_rng(0)
    rows = []
    for name, (model, ranges) in _single_op_models().items():
        qat = tfcompress.quantize(model)
        for _ in range(4):
            batch = [rng.uniform(lo, hi, (32, *model.inputs[i].shape[1:])).astype("float32")
                     for i, (lo, hi) in enumerate(ranges)]
            qat(batch if len(batch) > 1 else batch[0], training=True)
        path = out / (name.split()[0].lower() + f"_{len(rows)}.tflite")
        tfcompress.export.to_tflite(qat, path, "int8")
        runners = {"reference": ModelRunner(path, reference_kernels=True), "builtin": ModelRunner(path, delegate="none"),
                   "xnnpack": ModelRunner(path)}
        ref_runner = runners["reference"]
        xs = [[rng.integers(-128, 128, size=tuple(d["shape"])).astype(np.int8) for d in ref_runner.input_details]
              for _ in range(samples)]
        outputs = {label: np.stack([r.invoke_raw(x)[0].astype(np.int64) for x in xs]) for label, r in runners.items()}
        tflm = make_tflm_interpreter(ref_runner.model.data, arena_size=400_000)
        micro = []
        for x in xs:
            for i, value in enumerate(x):
                tflm.set_input(value, i)
            tflm.invoke()
            micro.append(np.array(tflm.get_output(0)).astype(np.int64))
        outputs["tflm"] = np.stack(micro)
        detail = ref_runner.output_details[0]
        scale, zero = detail["quantization"]
        # the file may order its inputs differently from the Keras model: match them by the name of
        # their input quantizer
        order = [next(i for i, d in enumerate(ref_runner.input_details) if f"quantize_{t.name}_" in d["name"])
                 for t in qat.inputs] if len(qat.inputs) > 1 else [0]
        dequantized = [[(x[i].astype(np.float32) - ref_runner.input_details[i]["quantization"][1])
                        * ref_runner.input_details[i]["quantization"][0] for i in order] for x in xs]
        keras_levels = _levels(qat, dequantized, scale, zero, outputs["reference"].shape)
        with kernel_arithmetic("xnnpack"):
            keras_xnnpack = _levels(qat, dequantized, scale, zero, outputs["reference"].shape)
        reference = outputs["reference"]
        row = {"op": name, "values": int(reference.size), "qat_vs_reference": float((keras_levels != reference).mean()),
               "qat_xnnpack_vs_xnnpack": float((keras_xnnpack != outputs["xnnpack"]).mean())}
        for label in ("tflm", "builtin", "xnnpack"):
            diff = np.abs(outputs[label] - reference)
            row[f"{label}_differs"] = float((diff > 0).mean())
            row[f"{label}_max_lsb"] = int(diff.max())
        row["xnnpack_delegated"] = "xnnpack" in runners["xnnpack"].info.delegate
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            row.update(_requantization_check(ref_runner.model, np.concatenate([x[0] for x in xs]), outputs))
        rows.append(row)
        print(f"{name:24s} QAT != ref {row['qat_vs_reference']:7.3%} | QAT(xnnpack) != XNNPACK "
              f"{row['qat_xnnpack_vs_xnnpack']:7.3%} | TFLM {row['tflm_differs']:7.3%} | builtin "
              f"{row['builtin_differs']:7.3%} (max {row['builtin_max_lsb']}) | XNNPACK {row['xnnpack_differs']:7.3%} "
              f"(max {row['xnnpack_max_lsb']}, delegated: {row['xnnpack_delegated']})", flush=True)
    return rows


RECORD_NETS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnet8", "ds_cnn")
KERNELS = (("LiteRT reference kernels", "litert_ref"), ("TFLM", "tflm"), ("LiteRT builtin kernels", "litert_builtin"),
           ("LiteRT XNNPACK (default)", "litert"),
           ("LiteRT XNNPACK, QAT model in kernel_arithmetic('xnnpack')", "xnnpack_arith"))


def record(nets: list[str], samples: int, steps: int, out: Path) -> None:
    """The table of record: each net's QAT model against its int8 file on every kernel, and the
    single-op kernel table (benchmarks/harness.py writes the JSON, RESULTS.md and the README)."""
    import harness

    rows = []
    for net in nets:
        started = time.perf_counter()
        qat, path, x = prepare(net, samples, steps, out)
        agreement = output_agreement(qat, path, x)
        row = {"net": net, "outputs compared": int(np.prod(qat.output_shape[1:])) * len(x)}
        for label, key in KERNELS:
            row[f"{label}: exact"] = round(agreement[f"{key}_exact"], 4)
            row[f"{label}: within 1 LSB"] = round(agreement[f"{key}_within_1lsb"], 4)
            row[f"{label}: max LSB"] = agreement[f"{key}_max_lsb"]
        row["seconds"] = round(time.perf_counter() - started)
        rows.append(row)
        print(row, flush=True)
    columns = ["net", "outputs compared"] + [f"{label}: {what}" for label, _ in KERNELS
                                             for what in ("exact", "within 1 LSB", "max LSB")]
    notes = [
        f"Random weights (seed 0), BatchNormalization statistics from {samples} random inputs, quantize(), ranges "
        f"from {steps} training-mode batches of 32, to_tflite(int8); the QAT model's outputs against the file's on "
        f"the same {samples} inputs, in LSB of the output scale. MobileNetV1-0.25 at 96x96x3, keras.applications "
        "nets at 32x32x3 with 10 classes and their own heads (MobileNetV2 alpha 0.35), ResNet-8 and DS-CNN at "
        "their reference inputs.",
        "By default the QAT forward pass computes every int8 kernel as the reference kernels do (tfcompress/layers/"
        "int8_kernels.py): CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, ADD, MUL, MEAN, AVERAGE_POOL_2D, "
        "HARD_SWISH, LOGISTIC, SOFTMAX; TFLM runs those reference kernels. LiteRT's builtin (optimized) kernels "
        "and XNNPACK compute some ops differently (the kernel table below). Inside "
        "tfcompress.quantization.kernel_arithmetic('xnnpack') the QAT model computes XNNPACK's x86-64 arithmetic "
        "instead (tfcompress/layers/xnnpack_kernels.py): the last column group. 'Exact' is claimed for LiteRT's "
        "reference kernels, TFLM and XNNPACK in its arithmetic; the builtin kernels are not reproduced.",
    ]
    harness.record("12_qat_exactness", "QAT: the QAT model against its int8 file, by kernel", columns, rows, notes)
    kernels = kernel_table(samples, out)
    kernel_columns = ["op", "values", "qat_vs_reference", "qat_xnnpack_vs_xnnpack", "tflm_differs", "builtin_differs", "builtin_max_lsb",
                      "xnnpack_differs", "xnnpack_max_lsb", "xnnpack_delegated", "xnnpack_equals_fp32_single_rounding",
                      "reference_equals_fixed_point", "disagreements_max_distance_to_half_lsb"]
    harness.record("12b_qat_kernels", "QAT: one int8 op per file, where each kernel differs from the reference",
                   kernel_columns, kernels, [
                       f"One quantize()d op per file (ranges from 4 training-mode batches), {samples} random int8 "
                       "inputs (every level equally likely); the fraction of int8 outputs that differ from LiteRT's "
                       "reference kernels, and the largest difference in LSB. qat_vs_reference: the QAT model "
                       "(dequantized inputs in, levels out); qat_xnnpack_vs_xnnpack: the QAT model inside "
                       "kernel_arithmetic('xnnpack') against XNNPACK. xnnpack_delegated: XNNPACK took the op (else "
                       "it ran on the builtin kernels).",
                       "XNNPACK's CONV_2D / DEPTHWISE_CONV_2D requantize once in float32, lrintf(acc * float32(s_in "
                       "s_w / s_out)) + zero point (equal to XNNPACK on 100% of the outputs checked); the reference "
                       "kernels round twice in fixed point (SaturatingRoundingDoublingHighMul, then "
                       "RoundingDivideByPOT by 2^r); they disagree only where acc * M is within 2^-r of a half "
                       "integer (the last three columns; benchmarks/NOTES.md, 'QAT on MobileNetV3 and "
                       "EfficientNet'). A QAT model has one value per output, so it equals one of the two kernels "
                       "there: the reference by default, XNNPACK inside kernel_arithmetic('xnnpack').",
                   ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net", nargs="?", help="the net to compare op by op (or --kernels)")
    parser.add_argument("--kernels", action="store_true",
                        help="one file per int8 op: where XNNPACK, LiteRT's builtin kernels and TFLM differ from "
                             "LiteRT's reference kernels")
    parser.add_argument("--record", nargs="*", default=None, metavar="NET",
                        help="output agreement of these nets (default: the six of issue 19) and the --kernels "
                             "table, recorded in benchmarks/results/ and RESULTS.md")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compare", type=int, default=16, help="inputs compared op by op")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-tflm", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="qat_diff_"))
    out.mkdir(parents=True, exist_ok=True)
    if args.record is not None:
        record(args.record or list(RECORD_NETS), args.samples, args.steps, out)
        return 0
    if args.kernels:
        rows = kernel_table(args.samples, out)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    if not args.net:
        parser.error("give a net, or --kernels")
    qat, path, x = prepare(args.net, args.samples, args.steps, out)
    rows, unmatched = compare(qat, path, x[:args.compare])
    first = None
    print(f"{'keras quantizer':40s} {'tflite op':22s} {'scale':>10s} {'max LSB':>8s} {'<=1 LSB':>8s}"
          f" | local: {'max':>5s} {'<=1':>8s} {'exact':>8s}")
    for row in rows:
        if row["tflite"] is None:
            print(f"{row['keras']:40s} {'(no int8 tensor with its scale)':22s} {row['scale']:10.3g}")
            continue
        local = (f" | {row['local_max_lsb']:11.2f} {row['local_within_1lsb']:8.2%} {row['local_exact']:8.2%}"
                 if "local_max_lsb" in row else f" | {row.get('local_error', '')}")
        print(f"{row['keras']:40s} {row['op']:22s} {row['scale']:10.3g} {row['max_lsb']:8.2f} "
              f"{row['within_1lsb']:8.2%}{local}")
        if first is None and row["max_lsb"] > 1.001:
            first = row
    if unmatched:
        print("file tensors no quantizer matched:", unmatched)
    if first is not None:
        print(f"FIRST beyond 1 LSB: {first['keras']} <- {first['op']} {first['tflite']} "
              f"max {first['max_lsb']:.2f} LSB, {first['within_1lsb']:.2%} within 1 LSB")
    agreement = output_agreement(qat, path, x, tflm=not args.no_tflm)
    print("output agreement:", json.dumps(agreement))
    if args.json:
        Path(args.json).write_text(json.dumps({"net": args.net, "tensors": rows, "unmatched": unmatched,
                                               "agreement": agreement}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
