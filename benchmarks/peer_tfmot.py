"""The tfmot and Larq peer rows, run under tf_keras (TF_USE_LEGACY_KERAS=1) in their own process.

tensorflow-model-optimization and Larq work only with legacy tf_keras, so the benchmarks call
this script as a subprocess with the same data (an .npz written by the parent), the same model,
epochs, optimizer and schedule, and read one JSON object from its last stdout line.

    TF_USE_LEGACY_KERAS=1 python benchmarks/peer_tfmot.py prune --data d.npz --out m.tflite ...
    TF_USE_LEGACY_KERAS=1 python benchmarks/peer_tfmot.py qat --data d.npz --out m.tflite ...
    TF_USE_LEGACY_KERAS=1 python benchmarks/peer_tfmot.py larq --data d.npz --out m.tflite ...

``larq``: LeNet-5-Caffe with ``larq.layers.QuantConv2D`` / ``QuantDense`` (kernel_quantizer
"ste_sign", kernel_constraint "weight_clip"; BinaryConnect weights, float activations), trained
from scratch for pretrain + fine-tuning epochs like our binary row, exported to int8 TFLite with
tf.lite. When larq is not importable it prints ``{"unavailable": why}`` instead, the reason
measured with ``pip install --dry-run --report - larq`` (e.g. the packages it would replace).

It is never imported by tfcompress: tfmot and Larq are peers and test references, not our runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def lenet(tf_keras, seed: int):
    tf_keras.utils.set_random_seed(seed)
    layers = tf_keras.layers
    return tf_keras.Sequential(
        [
            layers.InputLayer(input_shape=(28, 28, 1)),
            layers.Conv2D(20, 5, activation="relu", name="conv1"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(50, 5, activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(500, activation="relu", name="fc1"),
            layers.Dense(10, name="fc2"),
        ],
        name="lenet5_caffe",
    )


def lenet_larq(tf_keras, larq, seed: int):
    """LeNet-5-Caffe with Larq's binary-weight layers: ``magnitude_aware_sign`` is sign(W) times
    the per-output-channel mean |W| (XNOR-Net's scale, as our binary row), with the STE."""
    tf_keras.utils.set_random_seed(seed)
    layers = tf_keras.layers
    binary = {"kernel_quantizer": "magnitude_aware_sign", "kernel_constraint": "weight_clip"}
    return tf_keras.Sequential(
        [
            layers.InputLayer(input_shape=(28, 28, 1)),
            larq.layers.QuantConv2D(20, 5, activation="relu", name="conv1", **binary),
            layers.MaxPooling2D(2, name="pool1"),
            larq.layers.QuantConv2D(50, 5, activation="relu", name="conv2", **binary),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Flatten(name="flatten"),
            larq.layers.QuantDense(500, activation="relu", name="fc1", **binary),
            larq.layers.QuantDense(10, name="fc2", **binary),
        ],
        name="lenet5_caffe_larq",
    )


# what the peers must run beside, unchanged
_PROTECTED = ("numpy", "tensorflow", "keras", "tf-keras")


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def larq_unavailable(error: Exception) -> str:
    """Why larq cannot run here, measured: what ``pip install --dry-run larq`` would change."""
    from importlib import metadata

    installed = {}
    for name in _PROTECTED:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "larq"]
    failure, report = "", None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode == 0:
            report = json.loads(done.stdout)
        else:
            lines = [line for line in done.stderr.splitlines() if line.strip() and "is ignored" not in line]
            failure = lines[-1] if lines else f"exit code {done.returncode}"
    except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    if report is None:
        return f"not run: larq is not importable ({error}) and `pip install --dry-run larq` failed: {failure}"
    plan = {_canonical(item["metadata"]["name"]): item["metadata"] for item in report.get("install", [])}
    larq_meta = plan.get("larq", {})
    replaced = [f"{name} {installed[name]} -> {plan[name]['version']}" for name in installed if name in plan]
    pins = [d for d in larq_meta.get("requires_dist", []) if "extra" not in d
            and _canonical(d.split(";")[0]).startswith(_PROTECTED)]
    would = ", ".join(f"{m['name']}-{m['version']}" for m in plan.values())
    if replaced:
        return (f"not run: larq is not installed, and `pip install --dry-run larq` would install {would}, "
                f"replacing {', '.join(replaced)} (larq {larq_meta.get('version', '?')} requires "
                f"{', '.join(pins) or 'them'}); it cannot be installed beside "
                + ", ".join(f"{k} {v}" for k, v in installed.items()))
    return (f"not run: larq is not installed (pip would install {would} without replacing "
            f"{', '.join(installed)}): `pip install larq` to get this row")


def run_larq(tf, tf_keras, x_train, y_train, x_test, y_test, args) -> dict:
    try:
        import larq
    except ImportError as exc:
        return {"unavailable": larq_unavailable(exc)}

    model = lenet_larq(tf_keras, larq, args.seed)
    compile_model(tf_keras, model, args.lr)
    epochs = args.pretrain_epochs + args.epochs  # from scratch, the same budget as our binary row
    seconds = timed_fit(tf_keras, model, x_train, y_train, epochs, args.batch_size)
    result = {"larq": getattr(larq, "__version__", "?"), "tf_keras": tf_keras.__version__, "seconds_per_epoch": seconds,
              "epochs": epochs, "keras_accuracy": float(model.evaluate(x_test, y_test, verbose=0, batch_size=1000)[1])}
    flatbuffer = convert_int8(tf, model, x_train[:500])
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, args.out)
    result.update(int8_accuracy=litert_accuracy(flatbuffer, x_test, y_test), path=args.out)
    return result


def compile_model(tf_keras, model, lr: float):
    model.compile(
        optimizer=tf_keras.optimizers.Adam(lr),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def timed_fit(tf_keras, model, x, y, epochs, batch_size, callbacks=()):
    times: list[float] = []

    class Timer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=2, callbacks=[*callbacks, Timer()])
    steady = times[1:] or times
    return float(np.median(steady))


def litert_accuracy(flatbuffer: bytes, x: np.ndarray, y: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    correct = 0
    for i in range(len(x)):
        sample = x[i : i + 1]
        if inp["dtype"] != np.float32:
            sample = np.clip(np.round(sample / scale + zero), -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], sample)
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"])[0]) == y[i])
    return correct / len(x)


def convert_int8(tf, model, calibration: np.ndarray) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # TF 2.21 asks for a representative dataset for int8 I/O even for a QAT graph; with
    # fake-quant ops present the converter keeps their learned ranges for the activations.
    def representative():
        for i in range(len(calibration)):
            yield [calibration[i : i + 1]]

    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["prune", "qat", "overhead", "larq"])
    parser.add_argument("--rounds", type=int, default=4, help="overhead: alternating plain / pruned epochs")
    parser.add_argument("--data", required=True, help=".npz with x_train, y_train, x_test, y_test")
    parser.add_argument("--out", required=True, help="where to write the int8 .tflite")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--end-fraction", type=float, default=0.6,
                        help="pruning ends at this fraction of the fine-tuning steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf
    import tf_keras

    data = np.load(args.data)
    x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    if args.mode == "larq":
        print(json.dumps(run_larq(tf, tf_keras, x_train, y_train, x_test, y_test, args)))
        return
    import tensorflow_model_optimization as tfmot

    if args.mode == "overhead":
        print(json.dumps(overhead(tf_keras, tfmot, x_train, y_train, args)))
        return
    model = lenet(tf_keras, args.seed)
    compile_model(tf_keras, model, args.lr)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.pretrain_epochs, verbose=2)
    weights = model.get_weights()

    # Plain fine-tuning, for the overhead ratio (same process, same epochs).
    plain = lenet(tf_keras, args.seed)
    plain.set_weights(weights)
    compile_model(tf_keras, plain, args.lr)
    plain_seconds = timed_fit(tf_keras, plain, x_train, y_train, args.epochs, args.batch_size)

    result: dict = {"tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__,
                    "plain_seconds_per_epoch": plain_seconds}
    if args.mode == "prune":
        steps = int(np.ceil(len(x_train) / args.batch_size)) * args.epochs
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            0.0, args.sparsity, begin_step=0, end_step=int(steps * args.end_fraction), frequency=100
        )
        wrapped = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        compile_model(tf_keras, wrapped, args.lr)
        seconds = timed_fit(tf_keras, wrapped, x_train, y_train, args.epochs, args.batch_size,
                            [tfmot.sparsity.keras.UpdatePruningStep()])
        final = tfmot.sparsity.keras.strip_pruning(wrapped)
        compile_model(tf_keras, final, args.lr)
        kernels = [w for w in final.get_weights() if w.ndim > 1]
        result["kernel_sparsity"] = float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))
        result["nonzero_params"] = int(sum(np.count_nonzero(w) for w in final.get_weights()))
    else:
        final = tfmot.quantization.keras.quantize_model(model)
        compile_model(tf_keras, final, args.lr)
        seconds = timed_fit(tf_keras, final, x_train, y_train, args.epochs, args.batch_size)
    result["seconds_per_epoch"] = seconds
    result["overhead_vs_plain_fit"] = seconds / plain_seconds
    result["keras_accuracy"] = float(final.evaluate(x_test, y_test, verbose=0, batch_size=1000)[1])
    flatbuffer = convert_int8(tf, final, x_train[:500])
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, args.out)
    result["int8_accuracy"] = litert_accuracy(flatbuffer, x_test, y_test)
    result["path"] = args.out
    print(json.dumps(result))


def overhead(tf_keras, tfmot, x, y, args) -> dict:
    """Alternate one epoch of plain fit and one of pruned fit; median seconds per epoch each."""
    plain = lenet(tf_keras, args.seed)
    compile_model(tf_keras, plain, args.lr)
    steps = int(np.ceil(len(x) / args.batch_size)) * args.rounds
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, args.sparsity, begin_step=0,
                                                    end_step=int(steps * args.end_fraction), frequency=100)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(lenet(tf_keras, args.seed), pruning_schedule=schedule)
    compile_model(tf_keras, pruned, args.lr)
    times: dict[str, list[float]] = {"plain": [], "pruned": []}
    for _ in range(args.rounds):
        times["plain"].append(timed_fit(tf_keras, plain, x, y, 1, args.batch_size))
        times["pruned"].append(timed_fit(tf_keras, pruned, x, y, 1, args.batch_size,
                                         [tfmot.sparsity.keras.UpdatePruningStep()]))
    # the first round includes tracing
    plain_s, pruned_s = float(np.median(times["plain"][1:])), float(np.median(times["pruned"][1:]))
    return {"tfmot": tfmot.__version__, "plain_seconds_per_epoch": plain_s, "seconds_per_epoch": pruned_s,
            "overhead_vs_plain_fit": pruned_s / plain_s, "times": times}


def run_peer(mode: str, data, out: str, **options) -> dict:
    """Run this script under tf_keras and return its JSON result (called by the benchmarks)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "data.npz")
        np.savez(npz, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
        argv = [sys.executable, __file__, mode, "--data", npz, "--out", out]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tfmot peer failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
