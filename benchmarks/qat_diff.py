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
from pathlib import Path

import keras
import numpy as np


def build(net: str) -> tuple[keras.Model, tuple[int, ...]]:
    import tfcompress
    import tfcompress.export
    import tfcompress.zoo

    keras.utils.set_random_seed(0)
    if net == "mobilenet_v1":
        model = tfcompress.zoo.mobilenet_v1(input_shape=(96, 96, 3))
    elif net == "mobilenet_v2":
        model = tfcompress.zoo.applications("mobilenet_v2", (32, 32, 3))
    elif net == "resnet8":
        model = tfcompress.zoo.resnet8()
    elif net == "ds_cnn":
        model = tfcompress.zoo.ds_cnn()
    else:
        raise SystemExit(f"unknown net {net!r}")
    return model, tuple(model.input_shape[1:])


def prepare(net: str, samples: int, steps: int, out: Path, seed: int = 0):
    import tfcompress
    import tfcompress.export
    import tfcompress.zoo
    from tfcompress.batchnorm import recalibrate_batchnorm

    model, shape = build(net)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (samples, *shape)).astype("float32")
    recalibrate_batchnorm(model, x)
    qat = tfcompress.quantize(model)
    for _ in range(steps):
        batch = rng.uniform(0, 1, (32, *shape)).astype("float32")
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
    from tfcompress.layers.fake_quant import SharedRangeQuantizer

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
        best = None
        for op_name, d in produced:
            q = d["quantization"]
            if d["index"] in used or not q[0]:
                continue
            if tuple(d["shape"][1:]) != tuple(value.shape[1:]):
                continue
            if abs(q[0] - scale) <= 1e-5 * scale and q[1] == zero:
                best = (op_name, d)
                break
        if best is None:
            rows.append({"keras": name, "tflite": None, "scale": scale, "zero_point": zero})
            continue
        op_name, d = best
        used.add(d["index"])
        lite = (np.concatenate(lite_values[d["index"]]).astype(np.float32) - d["quantization"][1]) * d["quantization"][0]
        lsb = np.abs(lite - value) / d["quantization"][0]
        row = {"keras": name, "tflite": d["name"], "op": op_name, "shape": list(value.shape[1:]),
               "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1]),
               "max_lsb": float(lsb.max()), "within_1lsb": float((lsb <= 1.001).mean()),
               "mean_lsb": float(lsb.mean())}
        # local: the Keras layer on the file's own (dequantized) input, so propagation is left out
        layer = qat.get_layer(name.split("#")[0])
        source = producer[d["index"]]["inputs"][0]
        if source in lite_values and not isinstance(layer, SharedRangeQuantizer):
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
    result = {}
    # LiteRT as lsb_agreement runs it (XNNPACK), its builtin kernels, its reference kernels
    for label, kwargs in (("litert", {}), ("litert_builtin", {"delegate": "none"}),
                          ("litert_ref", {"reference_kernels": True})):
        lsb = np.abs(ModelRunner(path, **kwargs).predict(x) - keras_out) / scale
        result.update({f"{label}_within_1lsb": float((lsb <= 1.001).mean()), f"{label}_max_lsb": float(lsb.max())})
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
                              tflm_max_lsb=float(micro_lsb.max()))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compare", type=int, default=16, help="inputs compared op by op")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-tflm", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="qat_diff_"))
    out.mkdir(parents=True, exist_ok=True)
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
