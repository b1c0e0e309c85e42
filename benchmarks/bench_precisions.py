"""LeNet-5-Caffe on Fashion-MNIST at each precision: int8, int16x8, int4 weights, per-layer int4 (issue 22).

One float model (Adam 1e-3, seed 0, ``--epochs`` epochs; cached in benchmarks/out/explore) is
exported by ``to_tflite`` at every precision, and its float file quantized by
``quantize_tflite`` (what a user holding only the .tflite does). Peers on the same float file:
ai-edge-quantizer 0.10's own recipes (static a8w8, a16w8, a8 + per-channel int4 FC / conv
weights, weight-only int4), stored as it writes them.

Columns: LiteRT accuracy on the test set (builtin kernels), TFLite Micro accuracy on the first
``--tflm-samples`` test images (the real interpreter, reference kernels; "refused" with TFLM's
reason when it will not run the file), the file size, int4 weight tensors, buffers stored
after the flatbuffer, the measured TFLM arena, and the worst op output's SNR against the float
model (``tfcompress.export.compare`` on 64 test images).

    python benchmarks/bench_precisions.py --epochs 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import harness  # noqa: E402


def tflm_accuracy(path: Path, x, y, limit: int) -> tuple[float | None, int | None, str]:
    """(accuracy, arena bytes, "") on TFLM, or (None, None, why) when TFLM refuses the file."""
    import numpy as np

    from tfcompress.errors import TfcompressError
    from tfcompress.export import load_tflite
    from tfcompress.export.micro import _generous_interpreter, _run_tflm, to_micro

    try:
        report = to_micro(path, path.with_suffix(".micro"), samples=x[:4], isolate=True)
    except TfcompressError as exc:  # TFLM's reason, without the temporary file's path
        return None, None, " ".join(str(exc).replace(f"{path}: ", "").split())[:200]
    model = load_tflite(path)
    interpreter, _ = _generous_interpreter(model)
    t = model.inputs[0]
    dtype = np.dtype(t.dtype.lower())
    scale, zero = (t.quantization.scales[0], t.quantization.zero_points[0]) if t.quantization else (None, 0)
    correct = 0
    for i in range(limit):
        sample = x[i : i + 1]
        if scale:
            info = np.iinfo(dtype)
            sample = np.clip(np.round(sample / scale) + zero, info.min, info.max)
        out = _run_tflm(interpreter, [sample.astype(dtype)], 1)[0]
        correct += int(np.argmax(out) == y[i])
    return correct / limit, report.arena_total_bytes, f"TFLM = LiteRT-ref within {report.max_diff_reference} LSB"


def aeq_peer(float_path: Path, out: Path, recipe: str, calibration) -> Path:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer

    ops = qtyping.TFLOperationName
    signature = Interpreter(model_path=str(float_path)).get_signature_list()
    key, spec = next(iter(signature.items()))
    q = quantizer.Quantizer(str(float_path))
    if recipe == "a8w8":
        q.add_static_config(".*", ops.ALL_SUPPORTED, 8, 8)
    elif recipe == "a16w8":
        q.add_static_config(".*", ops.ALL_SUPPORTED, 16, 8)
    elif recipe == "a8w4":
        q.add_static_config(".*", ops.ALL_SUPPORTED, 8, 8)
        q.add_static_config(".*", ops.FULLY_CONNECTED, 8, 4)
        q.add_static_config(".*", ops.CONV_2D, 8, 4)
    elif recipe == "wo4":
        q.add_weight_only_config(".*", ops.ALL_SUPPORTED, 4)
    data = {key: [{spec["inputs"][0]: calibration[i : i + 1]} for i in range(len(calibration))]}
    result = q.calibrate(data, num_threads=1) if q.need_calibration else None
    path = out / f"aeq_{recipe}.tflite"
    from tfcompress._io import write_bytes_atomic

    write_bytes_atomic(path, bytes(q.quantize(result, enable_progress_report=False).quantized_model))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--tflm-samples", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None, help="train on N images (a smoke run)")
    parser.add_argument("--no-peers", action="store_true", help="skip ai-edge-quantizer's own recipes")
    args = parser.parse_args()

    import numpy as np

    from tfcompress.export import (
        compare,
        evaluate,
        load_tflite,
        mixed_precision,
        quantize_tflite,
        to_tflite,
    )

    data = common.load_data(args.limit)
    model = common.cached_dense_lenet(data, args.epochs, None if args.limit else common.EXPLORE_DIR)
    keras_accuracy = common.keras_accuracy(model, data)
    out = Path(tempfile.mkdtemp(prefix="tfcompress_bench_precisions_"))
    calib = data.calibration
    float_path = out / "float32.tflite"
    to_tflite(model, float_path, None)

    files: dict[str, tuple[Path, str]] = {"float32": (float_path, "to_tflite(None)")}
    for name, mode, precision in (("int8", "int8", None), ("int16x8", "int16x8", None), ("int4 (FC + conv)", "int4", None),
                                  ("int8, fc1 int4", "int8", {"fc1": "int4"}),
                                  ("int4 weight-only", "int4_weight_only", None)):
        path = out / f"{mode}_{'fc1' if precision else 'all'}.tflite"
        to_tflite(model, path, mode, representative_data=None if mode == "int4_weight_only" else calib,
                  precision=precision)
        files[name] = (path, f"to_tflite({mode!r}" + (f", precision={precision}" if precision else "") + ")")
    # mixed int4 / int8 to half the int8 file, chosen by the ZeroQ-style search
    mixed = mixed_precision(model, out / "mixed_half.tflite", calib, fraction_of_int8=0.5)
    int4_ops = ", ".join(row["op"] for row in mixed.layers if row["int4"])
    files["mixed int4 / int8 to 50% of int8"] = (out / "mixed_half.tflite",
                                                 f"mixed_precision(fraction_of_int8=0.5): int4 on {int4_ops}")
    for mode in ("int8", "int16x8"):
        path = out / f"from_file_{mode}.tflite"
        quantize_tflite(float_path, path, calib, mode)
        files[f"{mode} from float .tflite"] = (path, f"quantize_tflite({mode!r})")
    if not args.no_peers:
        for recipe in ("a8w8", "a16w8", "a8w4", "wo4"):
            files[f"ai-edge-quantizer {recipe}"] = (aeq_peer(float_path, out, recipe, calib), "ai-edge-quantizer 0.10")

    rows = [{"model": "Keras float", "made by": "", "LiteRT acc": round(keras_accuracy, 4)}]
    for name, (path, made_by) in files.items():
        parsed = load_tflite(path)
        litert = evaluate(path, data.x_test, data.y_test, delegate="none", isolate=True).accuracy
        tflm, arena, tflm_note = tflm_accuracy(path, data.x_test, data.y_test, args.tflm_samples)
        worst = None
        if name != "float32":
            try:
                worst = compare(model, path, data.x_test[:64]).worst(1)[0].snr_db
            except Exception as exc:  # compare reads int8 / int16 activations; a float-compute file has none
                print(f"{name}: compare: {exc}", file=sys.stderr)
        summary = parsed.summary()
        rows.append({
            "model": name, "made by": made_by, "LiteRT acc": round(litert, 4),
            "TFLM acc": round(tflm, 4) if tflm is not None else "refused",
            "bytes": parsed.size_bytes, "int4 tensors": summary["int4_tensors"],
            "offset buffers": summary.get("offset_buffers", 0),
            "TFLM arena": arena, "worst SNR dB": round(worst, 1) if worst is not None else None,
            "TFLM note": tflm_note,
        })
        print(rows[-1], flush=True)
    int8_bytes = next(r["bytes"] for r in rows if r["model"] == "int8")
    for r in rows:
        if "bytes" in r:
            r["bytes / int8"] = round(r["bytes"] / int8_bytes, 3)
    harness.record(
        "bench_precisions",
        "LeNet-5-Caffe on Fashion-MNIST at each precision (int8, int16x8, int4 weights, per-layer)",
        ["model", "made by", "LiteRT acc", "TFLM acc", "bytes", "bytes / int8", "int4 tensors", "offset buffers",
         "TFLM arena", "worst SNR dB", "TFLM note"],
        rows,
        notes=[
            f"float model trained {args.epochs} epochs (Adam 1e-3, batch 128, seed 0); 500 calibration images",
            "LiteRT acc: 10,000 test images on LiteRT's builtin kernels; TFLM acc: the first "
            f"{args.tflm_samples} test images on the TFLM interpreter (tflite-micro)",
            "TFLM note: to_micro's check against LiteRT's reference kernels on 4 images, or why TFLM refuses",
            "worst SNR: the lowest per-op-output SNR against the float model (export.compare, 64 test images)",
            "ai-edge-quantizer rows are its files as written (no inline_buffers): buffers past 256 KiB by offset",
        ],
        extra={"int8_bytes": int8_bytes, "keras_accuracy": keras_accuracy,
               "float_accuracy": float(np.round(keras_accuracy, 4))},
    )


if __name__ == "__main__":
    main()
