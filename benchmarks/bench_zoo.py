"""Zoo benchmark (issue 19): every `tfcompress.zoo` network through int8 export, TFLite Micro and
LiteRT, dense and channel-pruned; a trained subset through PTQ, QAT and pruning + QAT; tfmot beside it.

    python benchmarks/bench_zoo.py            # the tables of record (RESULTS.md, README)
    python benchmarks/bench_zoo.py --quick    # smoke run: ResNet-8 only, a few hundred images;
                                              # JSON to benchmarks/out/smoke, RESULTS.md untouched

Table 1, every zoo net (random weights, BatchNormalization statistics from random inputs, MLPerf
Tiny nets at their reference input sizes, the keras.applications nets at 96x96x3 with 10 classes
and their own heads): parameters, MACs, int8 size, TFLM arena (``to_micro``, which also checks
TFLM against LiteRT's reference kernels), LiteRT p50 latency on 1 thread (XNNPACK) of the dense
int8 file and of the channel-pruned file (50% of every dependency group's channels by L1 norm,
``prune(granularity="channel")`` + ``shrink``, exact), measured side by side (interleaved), and
the MAC and latency ratios.

Table 2, the trained subset (ResNet-8 at 32x32x3, DS-CNN on a 49x10x1 input, MobileNetV2-0.35
and MobileNetV1-0.25 at 96x96x3) on Fashion-MNIST (`tfcompress.datasets.fashion_mnist`) resized
to each input: float accuracy, PTQ int8, QAT int8 (``quantize`` + fine-tuning from the float
model) and channel-pruned 50% + QAT int8, all on LiteRT; tfmot's ``quantize_model`` under
tf_keras on the same architecture and float weights, fine-tuned as ours (benchmarks/peer_tfmot_zoo.py).

Each net runs in its own subprocess (one thread), one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

from tfcompress.zoo import APPLICATIONS, ZOO  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# the builder arguments of every zoo net in table 1: the MLPerf Tiny nets at their reference
# inputs, the keras.applications nets at 96x96x3 with 10 classes
SIZES: dict[str, dict] = {name: {"input_shape": (96, 96, 3), "classes": 10} if name in APPLICATIONS else {}
                          for name in ZOO}
# inputs in 0..255 for the nets that rescale them themselves
RAW_PIXELS = {"mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_b0"}
# the trained subset: zoo builder arguments (10 Fashion-MNIST classes)
TRAINED: dict[str, dict] = {
    "resnet8": {"input_shape": (32, 32, 3), "classes": 10},
    "ds_cnn": {"input_shape": (49, 10, 1), "classes": 10},
    "mobilenet_v2": {"input_shape": (96, 96, 3), "classes": 10},
    "mobilenet_v1": {"input_shape": (96, 96, 3), "classes": 10},
}
LABELS = {"resnet8": "ResNet-8", "ds_cnn": "DS-CNN", "mobilenet_v1": "MobileNetV1-0.25",
          "fc_autoencoder": "FC autoencoder", "mobilenet_v2": "MobileNetV2-0.35",
          "mobilenet_v3_small": "MobileNetV3Small", "mobilenet_v3_large": "MobileNetV3Large",
          "efficientnet_b0": "EfficientNetB0", "efficientnet_v2_b0": "EfficientNetV2B0",
          "resnet50_v2": "ResNet50V2", "densenet121": "DenseNet121", "nasnet_mobile": "NASNetMobile"}
CALIBRATION = 32
# extra table 1 rows: (net, channel multiple) pruned keeping a multiple of that many channels per group
MULTIPLE_ROWS = (("mobilenet_v2", 8),)


def _one_thread() -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def build(name: str, **kwargs):
    import keras

    keras.utils.set_random_seed(0)
    return ZOO[name](**kwargs)


def channel_pruned(model, sparsity: float = 0.5, channel_multiple: int = 1):
    """``model`` channel-pruned (every dependency group to ``sparsity`` by L1 norm) and shrunk:
    (small model, ShrinkReport)."""
    import tfcompress
    from tfcompress.pruning import ConstantSparsity, prune, strip, update_masks

    pruned = prune(model, ConstantSparsity(sparsity, 0), granularity="channel", verbose=0)
    update_masks(pruned, 0, channel_multiple=channel_multiple)
    return tfcompress.shrink(strip(pruned), return_report=True)


def micro_arena(path: Path, out: Path) -> tuple[int, bool]:
    """TFLM's measured arena (bytes) and whether TFLM equals LiteRT's reference kernels on a sample."""
    from tfcompress.export.micro import to_micro

    report = to_micro(path, out, name="model", num_samples=1)
    return int(report.arena_total_bytes), bool(report.identical)


# ------------------------------------------------------------------------------ table 1 worker


def structure_worker(name: str, runs: int, channel_multiple: int, tmp: Path) -> dict:
    from tfcompress.batchnorm import recalibrate_batchnorm
    from tfcompress.export import benchmark, to_tflite
    from tfcompress.metrics import summarize

    started = time.perf_counter()
    model = build(name, **SIZES[name])
    shape = tuple(model.input_shape[1:])
    high = 255.0 if name in RAW_PIXELS else 1.0
    x = np.random.default_rng(0).uniform(0, high, (CALIBRATION, *shape)).astype("float32")
    recalibrate_batchnorm(model, x)
    summary = summarize(model)
    dense_path = tmp / "dense.tflite"
    dense = to_tflite(model, dense_path, "int8", representative_data=x)
    dense_arena, dense_same = micro_arena(dense_path, tmp / "micro_dense")
    row = {
        "net": LABELS[name], "input": "x".join(str(s) for s in shape), "params": int(summary.params),
        "MACs": int(summary.macs), "int8 size (bytes)": int(dense.size_bytes), "TFLM arena (bytes)": dense_arena,
        "int8 coverage": dense.int8_coverage, "TFLM = LiteRT ref": dense_same,
    }
    try:  # a net the channel pruning cannot take keeps its dense columns and says why
        small, report = channel_pruned(model, channel_multiple=channel_multiple)
        small_path = tmp / "pruned.tflite"
        pruned = to_tflite(small, small_path, "int8", representative_data=x)
        pruned_arena, pruned_same = micro_arena(small_path, tmp / "micro_pruned")
    except Exception as exc:  # recorded in the table, not hidden
        latency = benchmark([dense_path], runs=runs, warmup=max(5, runs // 10), threads=1)
        row["p50 ms dense (1 thread)"] = round(latency.results[0].p50_ms, 4)
        row["error"] = f"channel prune / shrink / export: {_error(exc)}"
        row.update({"seconds": round(time.perf_counter() - started), "_delegate": latency.results[0].runtime.delegate})
        return row
    latency = benchmark([dense_path, small_path], runs=runs, warmup=max(5, runs // 10), threads=1)
    dense_ms, pruned_ms = (r.p50_ms for r in latency.results)
    mac_ratio = report.macs_after / report.macs_before
    latency_ratio = pruned_ms / dense_ms
    row.update({
        "p50 ms dense (1 thread)": round(dense_ms, 4),
        "pruned params": int(summarize(small).params), "pruned MACs": int(report.macs_after),
        "pruned int8 size (bytes)": int(pruned.size_bytes), "pruned TFLM arena (bytes)": pruned_arena,
        "p50 ms pruned (1 thread)": round(pruned_ms, 4), "MAC ratio": round(mac_ratio, 3),
        "latency ratio": round(latency_ratio, 3),
        "latency / MAC reduction": round((1 - latency_ratio) / (1 - mac_ratio), 3) if mac_ratio < 1 else None,
        "TFLM = LiteRT ref": dense_same and pruned_same, "seconds": round(time.perf_counter() - started),
        "_delegate": latency.results[0].runtime.delegate,
    })
    return row


def _error(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


# ------------------------------------------------------------------------------ table 2 worker


def resized_data(shape: tuple[int, int, int], train: int, test: int, seed: int = 0):
    """Fashion-MNIST subsets (stratified by a seeded shuffle) resized (bilinear) to ``shape``,
    grey replicated over 3 channels where the net takes 3."""
    import tensorflow as tf

    from tfcompress.datasets import fashion_mnist

    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    rng = np.random.default_rng(seed)
    tr, te = rng.permutation(len(x_train))[:train], rng.permutation(len(x_test))[:test]

    def resize(x):
        out = tf.image.resize(x, shape[:2], method="bilinear").numpy().astype("float32")
        return np.repeat(out, shape[2], axis=-1) if shape[2] != out.shape[-1] else out

    return resize(x_train[tr]), y_train[tr], resize(x_test[te]), y_test[te]


def _compile(model, lr, decay_steps: int = 0):
    """Adam at ``lr``, decayed to 0 along a cosine over ``decay_steps`` when given."""
    import keras

    rate = keras.optimizers.schedules.CosineDecay(lr, decay_steps) if decay_steps else lr
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _litert_accuracy(model, path: Path, x_cal, x_test, y_test, **export) -> tuple[float, int]:
    from tfcompress.export import evaluate, to_tflite

    report = to_tflite(model, path, "int8", representative_data=x_cal, **export)
    return round(evaluate(path, x_test, y_test).accuracy, 4), int(report.size_bytes)


def trained_worker(name: str, args, tmp: Path) -> dict:
    """Float, PTQ int8, QAT int8 and channel-pruned 50% + QAT int8 accuracy (LiteRT) of one net."""
    import keras

    import tfcompress
    from tfcompress.batchnorm import recalibrate_batchnorm
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.pruning import PolynomialDecay, prune, strip

    config = TRAINED[name]
    x_train, y_train, x_test, y_test = resized_data(config["input_shape"], args.train_samples, args.test_samples)
    cal = x_train[:200]
    steps_per_epoch = int(np.ceil(len(x_train) / args.batch_size))
    model = _compile(build(name, **config), args.lr, steps_per_epoch * args.epochs)
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    float_seconds = time.perf_counter() - started
    # a few hundred steps leave BatchNormalization's moving statistics behind the weights (DS-CNN:
    # chance accuracy in inference, 0.80 once re-estimated): re-estimate them on training images
    recalibrate_batchnorm(model, x_train[:2000])
    row = {"net": LABELS[name], "input": "x".join(map(str, config["input_shape"])),
           "train / test images": f"{len(x_train)} / {len(x_test)}", "float epochs": args.epochs,
           "float accuracy": round(float(model.evaluate(x_test, y_test, verbose=0, batch_size=256)[1]), 4)}
    weights = tmp / f"{name}_float_weights.npz"  # get_weights() order: the tfmot peer's set_weights reads it
    np.savez(weights, *model.get_weights())
    row["float s/epoch"] = round(float_seconds / args.epochs, 1)
    row["_weights"] = str(weights)
    try:
        row["PTQ int8 (LiteRT)"], _ = _litert_accuracy(model, tmp / "ptq.tflite", cal, x_test, y_test)
    except Exception as exc:  # each step's failure is a cell of the table
        row["PTQ int8 (LiteRT)"] = f"error: {_error(exc)}"
    try:  # QAT: fine-tune the float model's quantization-aware copy
        # fine-tuned as the float model was trained, lr decayed to 0 along a cosine (a constant
        # lr / 10 cost ResNet-8 1.6 points against this schedule, benchmarks/NOTES.md)
        qat_steps = steps_per_epoch * args.qat_epochs
        qat = _compile(tfcompress.quantize(model, verbose=0), args.lr / 10, qat_steps)
        started = time.perf_counter()
        qat.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.qat_epochs, verbose=2)
        row["QAT s/epoch"] = round((time.perf_counter() - started) / args.qat_epochs, 1)
        row["QAT int8 (LiteRT)"], _ = _litert_accuracy(qat, tmp / "qat.tflite", None, x_test, y_test)
    except Exception as exc:
        row["QAT int8 (LiteRT)"] = f"error: {_error(exc)}"
    try:  # channel pruning to 50% during fine-tuning, shrink, then QAT
        steps = steps_per_epoch * args.prune_epochs
        end = max(1, int(steps * 0.6))
        schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=end, frequency=max(1, min(50, end // 4)))
        pruned = prune(model, schedule, granularity="channel", verbose=0)
        _compile(pruned, args.lr / 3).fit(x_train, y_train, batch_size=args.batch_size, epochs=args.prune_epochs,
                                         verbose=2, callbacks=[UpdatePruning()])
        plain = strip(pruned)
        recalibrate_batchnorm(plain, x_train[:2000])
        small, report = tfcompress.shrink(plain, return_report=True)
        row["pruned MAC ratio"] = round(report.macs_after / report.macs_before, 3)
        pqat = _compile(tfcompress.quantize(small, verbose=0), args.lr / 10, steps_per_epoch * args.qat_epochs)
        pqat.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.qat_epochs, verbose=2)
        row["pruned 50% + QAT int8 (LiteRT)"], _ = _litert_accuracy(pqat, tmp / "pqat.tflite", None, x_test, y_test)
    except Exception as exc:
        row["pruned 50% + QAT int8 (LiteRT)"] = f"error: {_error(exc)}"
    keras.backend.clear_session()
    return row


# ------------------------------------------------------------------------------ driver


def _run_worker(kind: str, name: str, args, timeout: float, extra: tuple[str, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench_zoo_{name}_") as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, __file__, "--worker", kind, "--net", name, "--worker-out", str(out),
                   *args.worker_argv, *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "CUDA_VISIBLE_DEVICES": ""}
        started = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"net": LABELS[name], "error": f"timeout after {timeout:.0f} s"}
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"net": LABELS[name], "error": f"exit {done.returncode}: {' | '.join(tail)[-400:]}"}
        row = json.loads(out.read_text())
        row["_wall_seconds"] = round(time.perf_counter() - started)
        if kind == "trained":  # keep the float weights for the tfmot peer
            keep = Path(args.keep_dir) / f"{name}_float_weights.npz"
            Path(row["_weights"]).replace(keep)
            row["_weights"] = str(keep)
        return row


def peer_rows(args, trained: list[dict], support: list[str], tag: str) -> dict:
    """benchmarks/peer_tfmot_zoo.py under tf_keras: which steps tfmot supports on the ``support``
    nets, and its QAT accuracy on the ``trained`` rows' nets from our float weights."""
    data_dir = Path(args.keep_dir)
    jobs = []
    for row in trained:
        name = next(n for n, label in LABELS.items() if label == row["net"])
        if "_weights" not in row:
            continue
        npz = data_dir / f"{name}_data.npz"
        x_train, y_train, x_test, y_test = resized_data(TRAINED[name]["input_shape"], args.train_samples,
                                                        args.test_samples)
        np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        jobs.append({"net": name, "weights": row["_weights"], "data": str(npz)})
    spec = data_dir / f"peer_jobs_{tag}.json"
    spec.write_text(json.dumps({"support": support, "trained": jobs, "epochs": args.qat_epochs,
                                "lr": args.lr / 10, "batch_size": args.batch_size, "sizes": {
                                    n: {k: list(v) if isinstance(v, tuple) else v for k, v in SIZES[n].items()}
                                    for n in args.nets},
                                "trained_sizes": {n: {"input_shape": list(c["input_shape"]), "classes": c["classes"]}
                                                  for n, c in TRAINED.items()}}))
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    partial = data_dir / f"peer_out_{tag}.json"  # rewritten after every net: a crash keeps the nets done
    try:
        done = subprocess.run([sys.executable, str(HERE / "peer_tfmot_zoo.py"), str(spec), str(partial)], env=env,
                              capture_output=True, text=True, timeout=args.timeout * 4)
    except subprocess.TimeoutExpired:
        failure = f"timeout after {args.timeout * 4:.0f} s"
    else:
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        failure = f"exit {done.returncode}: " + " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[-400:]
    result = json.loads(partial.read_text()) if partial.exists() else {}
    result["error"] = failure
    return result


STRUCTURE_COLUMNS = ["net", "input", "params", "MACs", "int8 size (bytes)", "TFLM arena (bytes)",
                     "p50 ms dense (1 thread)", "pruned MACs", "pruned int8 size (bytes)", "pruned TFLM arena (bytes)",
                     "p50 ms pruned (1 thread)", "MAC ratio", "latency ratio", "latency / MAC reduction",
                     "TFLM = LiteRT ref", "tfmot quantize_model", "tfmot prune_low_magnitude"]
TRAINED_COLUMNS = ["net", "input", "train / test images", "float accuracy", "PTQ int8 (LiteRT)",
                   "QAT int8 (LiteRT)", "pruned 50% + QAT int8 (LiteRT)", "pruned MAC ratio",
                   "tfmot QAT int8 (LiteRT)", "PTQ - float (pts)", "QAT - PTQ (pts)", "float s/epoch", "QAT s/epoch"]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def structure_lane(args) -> tuple[list[dict], dict]:
    structure = []
    for name in args.nets:
        _log(f"table 1: {name}")
        structure.append(_run_worker("structure", name, args, args.timeout))
        _log(f"    {harness_rows(structure[-1:])[0]}")
    for name, multiple in MULTIPLE_ROWS:
        if name in args.nets and args.channel_multiple == 1:
            _log(f"table 1: {name}, channel multiple {multiple}")
            row = _run_worker("structure", name, args, args.timeout, (f"--channel-multiple={multiple}",))
            row["net"] = f"{LABELS[name]}, kept channels x{multiple}"
            structure.append(row)
            _log(f"    {harness_rows([row])[0]}")
    if args.no_peer:
        return structure, {}
    _log("tfmot support matrix")
    peer = peer_rows(args, [], args.nets, "support")
    _log(f"    tfmot support: {peer.get('support')} {peer.get('error', '')}")
    return structure, peer


def trained_lane(args, names: list[str]) -> list[tuple[dict, dict]]:
    """The table 2 rows of ``names``, each followed by tfmot's QAT of that net: [(row, peer)]."""
    out = []
    for name in names:
        _log(f"table 2: {name}")
        row = _run_worker("trained", name, args, args.timeout)
        _log(f"    {harness_rows([row])[0]}")
        peer = {}
        if not args.no_peer:
            _log(f"tfmot QAT: {name}")
            peer = peer_rows(args, [row], [], f"trained_{name}")
            _log(f"    tfmot {name}: {peer.get('trained')} {peer.get('error', '')}")
        out.append((row, peer))
    return out


# table 2 nets, the slowest first (QAT of the 96x96 nets dominates), dealt to the trained lanes
COST_ORDER = ("mobilenet_v2", "mobilenet_v1", "ds_cnn", "resnet8")


def deal(names: list[str], lanes: int) -> list[list[str]]:
    ordered = sorted(names, key=lambda n: COST_ORDER.index(n) if n in COST_ORDER else len(COST_ORDER))
    return [ordered[i::lanes] for i in range(lanes)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: ResNet-8 only, few images and epochs")
    parser.add_argument("--nets", nargs="*", default=None, help="table 1 nets (default: the whole zoo)")
    parser.add_argument("--trained", nargs="*", default=None, help="table 2 nets (default: the trained subset)")
    parser.add_argument("--runs", type=int, default=200, help="interleaved latency runs per file")
    parser.add_argument("--channel-multiple", type=int, default=1,
                        help="round every pruned group's kept channels up to a multiple of this")
    parser.add_argument("--train-samples", type=int, default=4000,
                        help="training images (1,500 images x 3 epochs left MobileNetV1-0.25 at 49%%, near-tied "
                        "logits whose int8 rounding flips classes; 4,000 x 5 reach 74%% with PTQ 0.3 points off)")
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--prune-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    parser.add_argument("--no-peer", action="store_true", help="leave out the tfmot peer")
    parser.add_argument("--lanes", type=int, default=3,
                        help="concurrent one-thread workers: table 1 in one lane, table 2 dealt to the others")
    parser.add_argument("--worker", choices=["structure", "trained"], help=argparse.SUPPRESS)
    parser.add_argument("--net", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.nets = args.nets or ["resnet8"]
        args.trained = args.trained if args.trained is not None else ["resnet8"]
        args.runs, args.train_samples, args.test_samples = min(args.runs, 20), 256, 256
        args.epochs, args.prune_epochs = 1, 1
    args.nets = args.nets if args.nets is not None else list(ZOO)
    args.trained = args.trained if args.trained is not None else list(TRAINED)
    if args.worker:
        _one_thread()
        with tempfile.TemporaryDirectory(prefix="bench_zoo_worker_") as tmp:
            if args.worker == "structure":
                row = structure_worker(args.net, args.runs, args.channel_multiple, Path(tmp))
            else:
                row = trained_worker(args.net, args, Path(tmp))
                keep = Path(args.worker_out).with_name(Path(row["_weights"]).name)
                Path(row["_weights"]).replace(keep)
                row["_weights"] = str(keep)
        Path(args.worker_out).write_text(json.dumps(row))
        return
    args.worker_argv = [f"--runs={args.runs}", f"--channel-multiple={args.channel_multiple}",
                        f"--train-samples={args.train_samples}", f"--test-samples={args.test_samples}",
                        f"--epochs={args.epochs}", f"--qat-epochs={args.qat_epochs}",
                        f"--prune-epochs={args.prune_epochs}", f"--batch-size={args.batch_size}", f"--lr={args.lr}"]
    keep = tempfile.TemporaryDirectory(prefix="bench_zoo_")
    args.keep_dir = keep.name
    started, load_before = time.perf_counter(), os.getloadavg()[1]
    # lanes of one-thread subprocesses side by side: table 1 then tfmot's support matrix in the
    # first, the table 2 nets (each followed by tfmot's QAT of it) dealt to the others
    groups = deal(args.trained, max(1, args.lanes - 1))
    with ThreadPoolExecutor(max_workers=args.lanes) as pool:
        lane_a = pool.submit(structure_lane, args)
        lanes_b = [pool.submit(trained_lane, args, group) for group in groups]
        structure, support_peer = lane_a.result()
        done = {harness_rows([row])[0]["net"]: (row, peer) for lane in lanes_b for row, peer in lane.result()}
    trained = [done[LABELS[name]][0] for name in args.trained]
    trained_peers = [done[LABELS[name]][1] for name in args.trained]
    peer = {"versions": support_peer.get("versions") or next((p["versions"] for p in trained_peers if p.get("versions")), {}),
            "support": support_peer.get("support", {}),
            "trained": {k: v for p in trained_peers for k, v in p.get("trained", {}).items()}}
    errors = [e for e in (support_peer.get("error"), *(p.get("error") for p in trained_peers)) if e]
    if errors:
        peer["error"] = " / ".join(errors)
    support = peer.get("support", {})
    for row in structure:
        name = next(n for n, label in LABELS.items() if row["net"].startswith(label))
        for step in ("quantize_model", "prune_low_magnitude"):
            row[f"tfmot {step}"] = support.get(name, {}).get(step, "n/a")
    for row in trained:
        name = next(n for n, label in LABELS.items() if label == row["net"])
        row["tfmot QAT int8 (LiteRT)"] = peer.get("trained", {}).get(name, {}).get("int8_accuracy", "n/a")
        ptq, qat = row.get("PTQ int8 (LiteRT)"), row.get("QAT int8 (LiteRT)")
        if isinstance(ptq, float) and "float accuracy" in row:
            row["PTQ - float (pts)"] = round(100 * (ptq - row["float accuracy"]), 2)
        if isinstance(ptq, float) and isinstance(qat, float):
            row["QAT - PTQ (pts)"] = round(100 * (qat - ptq), 2)
    minutes = (time.perf_counter() - started) / 60
    load = f"5-minute load average {load_before:.1f} at the start, {os.getloadavg()[1]:.1f} at the end"
    lanes = (f"{args.lanes} lanes side by side (table 1 in one, table 2's nets dealt to "
             f"{' / '.join(', '.join(LABELS[n] for n in g) for g in groups)})" if args.lanes > 1
             else "one net after the other")
    versions = peer.get("versions", {})
    delegate = next((r["_delegate"] for r in structure if "_delegate" in r), "?")
    notes = [
        f"One run, {minutes:.0f} min, each net in its own one-thread subprocess; {lanes} on the 2-core machine, "
        f"which other jobs shared ({load}). Random weights (seed 0), "
        "BatchNormalization statistics from random inputs (recalibrate_batchnorm), "
        f"{CALIBRATION} random calibration inputs (0..255 for the nets that rescale their input, else 0..1).",
        "MACs: tfcompress.metrics.summarize (multiply-accumulates of conv / dense layers). TFLM arena: measured by "
        "to_micro (TFLM reference kernels, 64-bit host); 'TFLM = LiteRT ref': TFLM equals LiteRT's reference "
        "kernels on a sample, dense and pruned.",
        "Channel pruning: prune(ConstantSparsity(0.5), granularity='channel') masks half of every dependency "
        "group's channels (L1 norm, one decision per group of coupled channels, floors kept), shrink removes them "
        f"exactly{'' if args.channel_multiple == 1 else f', kept counts rounded up to multiples of {args.channel_multiple}'}. "
        "MAC ratio = pruned / dense MACs; latency ratio = pruned / dense p50. The 'kept channels x8' row prunes "
        "with update_masks(channel_multiple=8): each group keeps a multiple of 8 channels (rounded up), its own "
        "dense and pruned files timed in its own process.",
        f"Latency: LiteRT {delegate}, 1 thread, {args.runs} runs per file after a warm-up, dense and pruned files "
        "interleaved in one process; 'latency / MAC reduction' = (1 - latency ratio) / (1 - MAC ratio) "
        "(the bar: >= 0.7 on MobileNetV2-0.35 at 96x96).",
    ]
    if versions:
        notes.append("tfmot columns: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + " under tf_keras, on "
                     "the same architectures (built by tfcompress.zoo's code against tf_keras): 'ok' or the error "
                     "it raised; tfmot has no structured channel pruning with removal (its structured option is "
                     "2:4 sparsity, prune_low_magnitude(sparsity_m_by_n)), so the pruned columns have no peer.")
    if peer.get("error"):
        notes.append(f"tfmot peer process failed (the nets it finished are shown): {peer['error'][-300:]}")
    notes.append(f"tfcompress: {library_source()}.")
    harness.record("10_zoo_structure", "Zoo: size, TFLM arena and LiteRT latency, dense and channel-pruned 50%",
                   with_errors(STRUCTURE_COLUMNS, structure), harness_rows(structure), notes,
                   extra={"args": _jsonable(vars(args)), "peer": _jsonable(peer)})
    trained_notes = [
        f"Fashion-MNIST, {args.train_samples} training and {args.test_samples} test images (seeded subsets; few "
        "training images so that the run fits in ~90 min on the shared 2-core machine: QAT of MobileNetV2-0.35 "
        "takes ~7 s per batch of 64 there, and minutes to trace) resized "
        "bilinearly to each net's input, grey repeated over 3 channels for the 3-channel nets. Batch "
        f"{args.batch_size}: {args.epochs} float epochs, Adam {args.lr} decayed to 0 along a cosine, then the "
        "BatchNormalization statistics re-estimated on 2,000 training images (recalibrate_batchnorm; the "
        "moving averages lag the weights after so few steps); QAT: quantize(float model) fine-tuned "
        f"{args.qat_epochs} epoch(s) from {args.lr / 10:g} decayed to 0 along a cosine; pruned: channel pruning to 50% along PolynomialDecay "
        f"during {args.prune_epochs} epoch(s) at {args.lr / 3:g} (UpdatePruning), strip, BN statistics "
        "re-estimated, shrink, then QAT as above.",
        "Accuracies of int8 files on LiteRT (XNNPACK, 1 thread) on the test subset; PTQ calibrated on 200 "
        "training images; QAT files use their learned ranges (no calibration).",
        "Bars: PTQ int8 within 1 point of float; QAT int8 at least PTQ's.",
    ]
    if versions:
        trained_notes.append("tfmot QAT: tfmot.quantization.keras.quantize_model on the same architecture under "
                             "tf_keras, starting from our float weights, fine-tuned with the same optimizer, "
                             "epochs and data, converted with tf.lite (int8 in / out) and run on LiteRT.")
    trained_notes.append(f"tfcompress: {library_source()}.")
    harness.record("11_zoo_trained", "Zoo: trained subset on Fashion-MNIST, float / PTQ / QAT / pruned + QAT",
                   with_errors(TRAINED_COLUMNS, trained), harness_rows(trained), trained_notes)
    keep.cleanup()


def with_errors(columns: list[str], rows: list[dict]) -> list[str]:
    """The columns, and an 'error' column when a worker or a step failed."""
    return columns + ["error"] if any("error" in r for r in rows) else columns


def library_source() -> str:
    """Which tfcompress the run imported: its git commit, and whether its package files had
    uncommitted edits (the work tree is shared; a run of record imports a clean checkout)."""
    import tfcompress

    root = Path(tfcompress.__file__).resolve().parent
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted edits in tfcompress/" if dirty else " (package files clean)")


def harness_rows(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


if __name__ == "__main__":
    main()
