"""Which ops TFLite's 16x8 mode writes, and which of them TFLite Micro runs (issue 22).

One tiny model per Keras layer / keras.ops operation, exported with
``to_tflite(..., quantization="int16x8")`` (int16 activations, int8 weights, int64 biases);
then each file runs on LiteRT's builtin and reference kernels (output error against the
float Keras model, in LSB of the int16 output) and on the real TFLite Micro interpreter
through ``to_micro`` (with ``TFLM_INT16_REFUSED`` emptied, so TFLM is asked): TFLM's own message when it refuses the file,
else its largest difference from LiteRT's reference kernels in LSB.

``TFLM_INT16_REFUSED`` in tfcompress/export/micro.py is this table's "TFLM refuses" rows.

    python benchmarks/probe_int16x8.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def cases():
    """(name, input shape, function of the Keras input) for each probed op."""
    import keras
    from keras import layers, ops

    def dense_on(shape):
        return lambda x: layers.Dense(6)(layers.Flatten()(x)) if len(shape) > 1 else layers.Dense(6)(x)

    img = (6, 6, 4)
    vec = (12,)
    return [
        ("Conv2D", img, lambda x: layers.Conv2D(5, 3, padding="same")(x)),
        ("DepthwiseConv2D", img, lambda x: layers.DepthwiseConv2D(3, padding="same")(x)),
        ("Dense", vec, dense_on(vec)),
        ("Conv2DTranspose", img, lambda x: layers.Conv2DTranspose(3, 2, strides=2)(x)),
        ("Add", img, lambda x: layers.Add()([x, layers.Conv2D(4, 1)(x)])),
        ("Subtract", img, lambda x: layers.Subtract()([x, layers.Conv2D(4, 1)(x)])),
        ("Multiply", img, lambda x: layers.Multiply()([x, layers.Conv2D(4, 1)(x)])),
        ("Maximum", img, lambda x: layers.Maximum()([x, layers.Conv2D(4, 1)(x)])),
        ("Minimum", img, lambda x: layers.Minimum()([x, layers.Conv2D(4, 1)(x)])),
        ("Concatenate", img, lambda x: layers.Concatenate()([x, layers.Conv2D(3, 1)(x)])),
        ("MaxPooling2D", img, lambda x: layers.MaxPooling2D(2)(x)),
        ("AveragePooling2D", img, lambda x: layers.AveragePooling2D(2)(x)),
        ("GlobalAveragePooling2D", img, lambda x: layers.GlobalAveragePooling2D()(x)),
        ("GlobalMaxPooling2D", img, lambda x: layers.GlobalMaxPooling2D()(x)),
        ("ops.sum", img, lambda x: ops.sum(x, axis=(1, 2))),
        ("Reshape", img, lambda x: layers.Reshape((36, 4))(x)),
        ("Permute", img, lambda x: layers.Permute((3, 1, 2))(x)),
        ("Softmax", vec, lambda x: layers.Softmax()(x)),
        ("log_softmax", vec, lambda x: layers.Activation("log_softmax")(x)),
        ("sigmoid", vec, lambda x: layers.Activation("sigmoid")(x)),
        ("tanh", vec, lambda x: layers.Activation("tanh")(x)),
        ("ReLU", vec, lambda x: layers.ReLU()(x)),
        ("ReLU6", vec, lambda x: layers.ReLU(6.0)(x)),
        ("LeakyReLU", vec, lambda x: layers.LeakyReLU(0.2)(x)),
        ("PReLU", img, lambda x: layers.PReLU(shared_axes=[1, 2])(x)),
        ("hard_swish", vec, lambda x: layers.Activation("hard_swish")(x)),
        ("elu", vec, lambda x: layers.Activation("elu")(x)),
        ("ops.exp", vec, lambda x: ops.exp(x)),
        ("ops.abs", vec, lambda x: ops.abs(x)),
        ("ops.sqrt", vec, lambda x: ops.sqrt(ops.abs(x) + 0.1)),
        ("ops.rsqrt", vec, lambda x: ops.rsqrt(ops.abs(x) + 0.1)),
        ("ops.square", vec, lambda x: ops.square(x)),
        ("ZeroPadding2D", img, lambda x: layers.ZeroPadding2D(1)(x)),
        ("UpSampling2D nearest", img, lambda x: layers.UpSampling2D(2)(x)),
        ("UpSampling2D bilinear", img, lambda x: layers.UpSampling2D(2, interpolation="bilinear")(x)),
        ("strided slice", img, lambda x: x[:, 1:5, ::2, :]),
        ("ops.split", img, lambda x: ops.split(x, 2, axis=-1)[1]),
        ("ops.stack", vec, lambda x: ops.stack([x, 2.0 * x], axis=1)),
        ("ops.matmul", (4, 6), lambda x: ops.matmul(x, ops.transpose(x, (0, 2, 1)))),
        ("Conv2D dilated", (8, 8, 2), lambda x: layers.Conv2D(3, 3, dilation_rate=2, padding="same")(x)),
        ("L2 normalize", vec, lambda x: keras.ops.normalize(x, axis=-1)),
        ("ops.argmax", vec, lambda x: ops.cast(ops.argmax(x, axis=-1), "float32")),
    ]


def probe(name, shape, build, out: Path, n: int = 16) -> dict:
    import keras
    import numpy as np

    from tfcompress.errors import TfcompressError
    from tfcompress.export import to_tflite
    from tfcompress.export.micro import to_micro
    from tfcompress.export.runtime import ModelRunner

    keras.utils.set_random_seed(0)
    x = keras.Input(shape)
    model = keras.Model(x, build(x))
    data = np.random.default_rng(0).normal(size=(64, *shape)).astype("float32")
    path = out / f"{name.replace(' ', '_').replace('.', '_')}.tflite"
    row = {"case": name}
    try:
        report = to_tflite(model, path, "int16x8", representative_data=data)
    except TfcompressError as exc:
        row["converter"] = f"refused: {str(exc).splitlines()[0][:160]}"
        return row
    row["ops"] = ", ".join(sorted(report.ops))
    row["converter"] = "16x8"
    expected = np.asarray(model.predict(data[:n], verbose=0), np.float64)
    for label, kwargs in (("LiteRT builtin", {"delegate": "none"}), ("LiteRT ref", {"reference_kernels": True})):
        try:
            runner = ModelRunner(path, runtime="litert", **kwargs)
            got = runner.predict(data[:n]).astype(np.float64)
            scale = runner.output_details[0]["quantization"][0] or 1.0
            error = float(np.max(np.abs(got - expected)))
            row[f"{label} max err LSB"] = round(error / scale, 1)
            if label == "LiteRT ref":
                row["ref err / max |float|"] = f"{error / max(float(np.max(np.abs(expected))), 1e-12):.2e}"
        except TfcompressError as exc:
            row[f"{label} max err LSB"] = f"fails: {str(exc)[:100]}"
    try:  # in this process, with the measured table emptied: TFLM itself must refuse
        micro = to_micro(path, out / (path.stem + "_micro"), samples=data[:8])
        row["TFLM"] = "runs"
        row["TFLM vs ref LSB"] = micro.max_diff_reference
    except TfcompressError as exc:
        row["TFLM"] = "refuses"
        row["TFLM message"] = " ".join(str(exc).split())[:220]
    return row


def main() -> None:
    from tfcompress.export import micro

    micro.TFLM_INT16_REFUSED.clear()  # what this script measures
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="case names to run (default all)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (results under benchmarks/out/smoke)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tfcompress_probe16x8_"))
    rows = []
    for name, shape, build in cases():
        if args.only and name not in args.only:
            continue
        row = probe(name, shape, build, out)
        print(row, flush=True)
        rows.append(row)
    columns = ["case", "ops", "converter", "LiteRT builtin max err LSB", "LiteRT ref max err LSB",
               "ref err / max |float|", "TFLM",
               "TFLM vs ref LSB", "TFLM message"]
    refused = sorted({op for r in rows if r.get("TFLM") == "refuses" for op in r["ops"].split(", ")})
    harness.record(
        "probe_int16x8",
        "int16x8 (16x8) ops on LiteRT and TFLite Micro",
        columns,
        rows,
        notes=[
            "one tiny model per layer, to_tflite(quantization='int16x8'), 64 normal calibration samples; "
            "errors against the float Keras model on 16 samples, in LSB of the int16 output scale",
            "TFLM: tfcompress.export.to_micro on 8 samples; 'refuses' quotes TFLM's message",
            f"ops in files TFLM refused: {', '.join(refused) or 'none'}",
        ],
    )


if __name__ == "__main__":
    main()
