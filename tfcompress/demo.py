"""The main job on a built-in default: `tfcompress demo`.

Train LeNet-5-Caffe on Fashion-MNIST (scikit-learn's 8x8 digits and a small CNN
when Fashion-MNIST is not installed), export it to float32 and full-int8 TFLite,
verify the int8 file on LiteRT (accuracy, agreement with Keras) and on the real
TFLite Micro interpreter, benchmark both files side by side, check Edge TPU
readiness, and write the microcontroller sources.

With ``compress=True`` (the default) it then runs the compression road on the same model:
structured channel pruning (50% of the channels, PolynomialDecay over one epoch, then
``shrink`` removes them), quantization-aware training for one epoch, and a full-int8 export
from the learned ranges, verified the same way and benchmarked beside the plain int8 file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tfcompress._io import write_text_atomic
from tfcompress.errors import TfcompressError


def _load(dataset: str):
    from tfcompress import datasets

    if dataset in ("auto", "fashion_mnist"):
        try:
            return "fashion_mnist", datasets.fashion_mnist()
        except TfcompressError:
            if dataset == "fashion_mnist":
                raise
    return "digits", datasets.digits()


def _model_for(name: str, input_shape, num_classes: int):
    import keras

    from tfcompress.models import lenet5_caffe

    if name == "fashion_mnist":
        return lenet5_caffe(input_shape=input_shape, num_classes=num_classes)
    # 8x8 digits are too small for LeNet's two valid 5x5 convolutions.
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="digits_cnn",
    )


def run_demo(
    out_dir: str = "tfcompress_demo",
    dataset: str = "auto",
    epochs: int = 3,
    runs: int = 200,
    seed: int = 0,
    log: Callable[[str], None] = print,
    compress: bool = True,
) -> dict:
    """Run the whole road and return (and print) its results; also writes ``results.json``.

    Example:
        The plain road only (``compress=False``; the compression road trains for a minute more), one
        epoch on the digits:

        >>> result = run_demo("demo_out", dataset="digits", epochs=1, runs=5, compress=False, log=lambda line: None)
        >>> result["dataset"], result["int8_coverage"], result["tflm_identical_to_litert_reference"], result["passed"]
        ('digits', 1.0, True, True)
        >>> (Path("demo_out") / "model.keras").is_file(), (Path("demo_out") / "results.json").is_file()
        (True, True)
    """
    import keras

    from tfcompress.export import agreement, benchmark, evaluate, to_tflite
    from tfcompress.export.edgetpu import edgetpu_report
    from tfcompress.export.micro import to_micro
    from tfcompress.metrics import summarize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    name, ((x_train, y_train), (x_test, y_test)) = _load(dataset)
    log(f"[1/6] data: {name}, {len(x_train)} train / {len(x_test)} test images of {x_train.shape[1:]}")

    model = _model_for(name, x_train.shape[1:], int(y_train.max()) + 1)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    log(f"[2/6] training {model.name} for {epochs} epoch(s)")
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=128, epochs=epochs, verbose=0, validation_split=0.0)
    train_seconds = time.perf_counter() - started
    keras_accuracy = float(model.evaluate(x_test, y_test, verbose=0, batch_size=512)[1])
    model.save(out / "model.keras")
    summary = summarize(model)

    log("[3/6] exporting float32 and full-int8 TFLite")
    float_report = to_tflite(model, out / "model_float32.tflite", quantization=None)
    int8_report = to_tflite(model, out / "model_int8.tflite", "int8", representative_data=x_train[:500])
    float_eval = evaluate(out / "model_float32.tflite", x_test, y_test)
    int8_eval = evaluate(out / "model_int8.tflite", x_test, y_test)
    agree = agreement(model, out / "model_int8.tflite", x_test[:1000])

    log("[4/6] TFLite Micro: C sources, arena size, TFLM vs LiteRT")
    micro = to_micro(out / "model_int8.tflite", out / "micro", name="model")

    compressed = None
    if compress:
        compressed = _compress(model, x_train, y_train, x_test, y_test, out, log)

    files = [out / "model_float32.tflite", out / "model_int8.tflite"]
    if compressed is not None:
        files.append(out / "model_pruned_qat_int8.tflite")
    log(f"[5/6] benchmarking {len(files)} files on LiteRT, 1 thread, {runs} interleaved runs")
    bench = benchmark(files, runs=runs, warmup=20, threads=1)

    log("[6/6] Edge TPU readiness")
    tpu = edgetpu_report(out / "model_int8.tflite")

    float_p50, int8_p50 = bench.results[0].p50_ms, bench.results[1].p50_ms
    result = {
        "dataset": name,
        "model": model.name,
        "epochs": epochs,
        "train_seconds": round(train_seconds, 1),
        "params": summary.params,
        "macs": summary.macs,
        "keras_accuracy": round(keras_accuracy, 4),
        "tflite_float32_accuracy": round(float_eval.accuracy, 4),
        "tflite_int8_accuracy": round(int8_eval.accuracy, 4),
        "int8_top1_agreement": round(agree.top1_agreement, 4),
        "float32_bytes": float_report.size_bytes,
        "int8_bytes": int8_report.size_bytes,
        "int8_gzip_bytes": int8_report.gzip_size_bytes,
        "int8_size_ratio": round(int8_report.size_bytes / float_report.size_bytes, 3),
        "int8_coverage": int8_report.int8_coverage,
        "p50_ms_float32": round(float_p50, 4),
        "p50_ms_int8": round(int8_p50, 4),
        "int8_over_float32_latency": round(int8_p50 / float_p50, 3),
        "delegate": bench.results[1].runtime.delegate,
        "runtime": f"{bench.results[1].runtime.runtime} {bench.results[1].runtime.version}",
        "tflm_arena_bytes": micro.arena_bytes,
        "tflm_identical_to_litert_reference": micro.identical,
        "tflm_max_diff_lsb": micro.max_diff_reference,
        "tflm_ops_that_differ": [str(d) for d in micro.op_differences],
        "edgetpu_ready": tpu.ready,
        "out_dir": str(out),
    }
    if compressed is not None:
        compressed["p50_ms"] = round(bench.results[2].p50_ms, 4)
        compressed["latency_vs_int8"] = round(bench.results[2].p50_ms / int8_p50, 3)
        result["compressed"] = compressed
    # TFLM and LiteRT may round a requantization differently (1 LSB); more is a real mismatch.
    result["passed"] = bool(
        (micro.identical or (micro.diff_unit == "LSB" and micro.max_diff_reference <= 1))
        and int8_report.int8_coverage == 1.0
        and result["tflite_int8_accuracy"] >= result["keras_accuracy"] - 0.01
    )
    if compressed is not None:
        result["passed"] = result["passed"] and compressed["int8_coverage"] == 1.0 and compressed["tflm_max_diff_lsb"] <= 1
    write_text_atomic(out / "results.json", json.dumps(result, indent=2) + "\n")
    log(_table(result))
    return result


def _compress(model, x_train, y_train, x_test, y_test, out: Path, log) -> dict:
    """Channel pruning + shrink, then QAT, then int8 export from the learned ranges."""
    import math

    import keras

    import tfcompress
    from tfcompress.export import agreement, evaluate, to_micro, to_tflite
    from tfcompress.metrics import summarize

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = math.ceil(len(x_train) / 128)
    log("[4a/6] compression: pruning 50% of the channels (one epoch), then shrink")
    schedule = tfcompress.pruning.schedules.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=steps // 2, frequency=max(steps // 8, 1))
    pruned = tfcompress.prune(model, schedule=schedule, granularity="channel")
    pruned.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    pruned.fit(x_train, y_train, batch_size=128, epochs=1, verbose=0, callbacks=[tfcompress.callbacks.UpdatePruning()])
    small, report = tfcompress.shrink(pruned, return_report=True)
    log("[4b/6] compression: quantization-aware training (one epoch), int8 export without calibration")
    qat = tfcompress.quantize(small)
    qat.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    qat.fit(x_train, y_train, batch_size=128, epochs=1, verbose=0)
    path = out / "model_pruned_qat_int8.tflite"
    export = to_tflite(qat, path, "int8")
    micro = to_micro(path, out / "micro_compressed", name="model_compressed")
    after = summarize(small)
    return {
        "channels": report.structure(),
        "params": after.params,
        "macs": after.macs,
        "macs_ratio": round(report.macs_ratio, 2),
        "keras_qat_accuracy": round(float(qat.evaluate(x_test, y_test, verbose=0, batch_size=512)[1]), 4),
        "tflite_int8_accuracy": round(evaluate(path, x_test, y_test).accuracy, 4),
        "int8_top1_agreement_with_qat": round(agreement(qat, path, x_test[:1000]).top1_agreement, 4),
        "int8_bytes": export.size_bytes,
        "int8_gzip_bytes": export.gzip_size_bytes,
        "int8_coverage": export.int8_coverage,
        "tflm_arena_bytes": micro.arena_bytes,
        "tflm_max_diff_lsb": micro.max_diff_reference,
    }


def _table(r: dict) -> str:
    rows = [
        ("data / model", f"{r['dataset']} / {r['model']} ({r['params']:,} params, {r['macs']:,} MACs)"),
        ("training", f"{r['epochs']} epoch(s), {r['train_seconds']} s"),
        ("accuracy", f"Keras {r['keras_accuracy']:.4f} | TFLite float32 {r['tflite_float32_accuracy']:.4f} | "
                     f"TFLite int8 {r['tflite_int8_accuracy']:.4f} (LiteRT)"),
        ("int8 vs Keras", f"top-1 agreement {r['int8_top1_agreement']:.4f}, int8 coverage {r['int8_coverage']:.0%}"),
        ("size", f"float32 {r['float32_bytes']:,} B | int8 {r['int8_bytes']:,} B "
                 f"({r['int8_size_ratio']:.2f}x) | int8 gzip {r['int8_gzip_bytes']:,} B"),
        ("latency p50", f"float32 {r['p50_ms_float32']} ms | int8 {r['p50_ms_int8']} ms "
                        f"(int8/float32 = {r['int8_over_float32_latency']}x) on {r['runtime']}, {r['delegate']}"),
        ("TFLite Micro", f"arena {r['tflm_arena_bytes']:,} B, outputs vs LiteRT reference kernels: "
                         + ("identical" if r["tflm_identical_to_litert_reference"]
                            else f"max {r['tflm_max_diff_lsb']:g} LSB apart in "
                                 + ", ".join(r["tflm_ops_that_differ"]))),
        ("Edge TPU", "ready" if r["edgetpu_ready"] else "not ready (see tfcompress edgetpu)"),
    ]
    c = r.get("compressed")
    if c:
        rows += [
            ("compressed", f"channels {c['channels']}, MACs {c['macs']:,} ({c['macs_ratio']}x fewer), "
                           f"params {c['params']:,}"),
            ("  accuracy", f"QAT Keras {c['keras_qat_accuracy']:.4f} | int8 LiteRT {c['tflite_int8_accuracy']:.4f} "
                           f"(top-1 agreement {c['int8_top1_agreement_with_qat']:.4f})"),
            ("  int8 file", f"{c['int8_bytes']:,} B (gzip {c['int8_gzip_bytes']:,}), p50 {c['p50_ms']} ms = "
                            f"{c['latency_vs_int8']}x the plain int8 model; TFLM arena {c['tflm_arena_bytes']:,} B"),
        ]
    rows += [
        ("written to", r["out_dir"]),
        ("result", "PASS" if r["passed"] else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
