"""tfmot on the zoo nets, under tf_keras (TF_USE_LEGACY_KERAS=1), for benchmarks/bench_zoo.py.

    TF_USE_LEGACY_KERAS=1 python benchmarks/peer_tfmot_zoo.py JOBS.json [PARTIAL.json]

JOBS.json (written by bench_zoo.py): ``support``: zoo names; ``trained``: ``[{net, weights (.npz of
get_weights()), data (.npz)}]``; ``epochs``, ``lr``, ``batch_size``; ``sizes`` / ``trained_sizes``:
the builder arguments. The nets are built by `tfcompress.zoo`'s own code run against tf_keras (its
source with ``import keras`` bound to tf_keras), so both libraries see the same architecture.

For every ``support`` net: does ``quantize_model`` wrap it, and does the QAT model convert to a
full-int8 file; does ``prune_low_magnitude`` wrap it. For every ``trained`` net: our float weights,
``quantize_model``, the same fine-tuning, tf.lite int8 conversion, LiteRT accuracy. Prints one JSON
object on its last stdout line; with PARTIAL.json, also rewrites that file after every net (what
the driver reads if this process dies on a later net).
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_tfmot import convert_int8, litert_accuracy  # noqa: E402


def legacy_zoo():
    """`tfcompress.zoo` executed with ``keras`` = tf_keras (a module object with its builders)."""
    import tfcompress.zoo

    source = Path(tfcompress.zoo.__file__).read_text()
    module = types.ModuleType("zoo_tf_keras")
    module.__dict__["__name__"] = "zoo_tf_keras"
    exec(compile(source.replace("\nimport keras\n", "\nimport tf_keras as keras\n"), "zoo_tf_keras", "exec"),
         module.__dict__)
    return module


def _error(exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:120]}"


def _int8_only(flatbuffer: bytes) -> bool:
    from tfcompress.export.tflite_file import load_tflite

    parsed = load_tflite(flatbuffer)
    return all(t.dtype in ("INT8", "INT32") for op in parsed.ops for t in parsed.op_tensors(op)
               if t is not None and not t.constant)


def support(zoo, tf, tfmot, name: str, kwargs: dict) -> dict:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = zoo.ZOO[name](**kwargs)
    result: dict = {}
    started = time.perf_counter()
    try:
        qat = tfmot.quantization.keras.quantize_model(model)
    except Exception as exc:  # the support matrix records every refusal
        result["quantize_model"] = _error(exc)
    else:
        try:
            shape = tuple(model.input_shape[1:])
            calibration = np.random.default_rng(0).uniform(0, 1, (8, *shape)).astype("float32")
            flatbuffer = convert_int8(tf, qat, calibration)
            result["quantize_model"] = "ok" if _int8_only(flatbuffer) else "ok (float ops left)"
        except Exception as exc:
            result["quantize_model"] = f"wraps; int8 export fails: {_error(exc)}"
    try:
        tfmot.sparsity.keras.prune_low_magnitude(
            model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
        result["prune_low_magnitude"] = "ok (unstructured)"
    except Exception as exc:
        result["prune_low_magnitude"] = _error(exc)
    result["seconds"] = round(time.perf_counter() - started)
    return result


def trained(zoo, tf, tfmot, job: dict, kwargs: dict, spec: dict) -> dict:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = zoo.ZOO[job["net"]](**kwargs)
    stored = np.load(job["weights"])
    model.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
    data = np.load(job["data"])
    x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    result = {"float_accuracy_tf_keras": None}
    try:
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        result["float_accuracy_tf_keras"] = round(float(model.evaluate(x_test, y_test, verbose=0, batch_size=256)[1]), 4)
        qat = tfmot.quantization.keras.quantize_model(model)
        # the same schedule as our QAT: lr decayed to 0 along a cosine over the QAT epochs
        steps = int(np.ceil(len(x_train) / spec["batch_size"])) * spec["epochs"]
        rate = tf_keras.optimizers.schedules.CosineDecay(spec["lr"], steps)
        qat.compile(optimizer=tf_keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
        qat.fit(x_train, y_train, batch_size=spec["batch_size"], epochs=spec["epochs"], verbose=2)
        flatbuffer = convert_int8(tf, qat, x_train[:200])
        result["int8_accuracy"] = round(litert_accuracy(flatbuffer, x_test, y_test), 4)
    except Exception as exc:
        result["int8_accuracy"] = _error(exc)
    return result


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    zoo = legacy_zoo()
    out = {"versions": {"tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__}, "support": {}, "trained": {}}

    def shapes(kwargs: dict) -> dict:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}

    partial = Path(sys.argv[2]) if len(sys.argv) > 2 else None

    def done(name: str, result: dict) -> None:
        print(name, result, file=sys.stderr, flush=True)
        if partial is not None:
            partial.write_text(json.dumps(out))

    for name in spec["support"]:
        out["support"][name] = support(zoo, tf, tfmot, name, shapes(spec["sizes"].get(name, {})))
        done(name, out["support"][name])
    for job in spec["trained"]:
        out["trained"][job["net"]] = trained(zoo, tf, tfmot, job, shapes(spec["trained_sizes"][job["net"]]), spec)
        done(job["net"], out["trained"][job["net"]])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
