"""Probe for issue 22's microcontroller target: a Fashion-MNIST classifier at >= 91.0% int8
accuracy in <= 16 KB of flash (the .tflite file) and <= 8 KB of TFLM tensor arena.

    python benchmarks/explore_mcu_target.py [--arch NAME] [--epochs N] [--teacher-epochs N]

Trains a small CNN on the 60,000 training images (random shifts of up to 2 pixels and horizontal
flips), optionally distilled from a wider teacher, exports full int8 (PTQ on 500 training images,
then QAT fine-tuning), and measures on the 10,000 test images: LiteRT int8 accuracy, the file's
bytes and the TFLM arena (tfcompress.export.to_micro, measured by TFLM's recording allocator).
Writes one JSON line per run to benchmarks/out/explore_mcu_target.jsonl; a probe, not a table of
record (benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import tfcompress
from tfcompress.datasets import fashion_mnist
from tfcompress.distillation import Distiller
from tfcompress.export import evaluate, to_micro, to_tflite

L = keras.layers


def block(h, filters, kernel, pool=True, padding="same"):
    h = L.Conv2D(filters, kernel, padding=padding, use_bias=False)(h)
    h = L.ReLU()(L.BatchNormalization()(h))
    return L.MaxPooling2D()(h) if pool else h


def _separable(h, filters, stride):
    h = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h)))
    return L.ReLU()(L.BatchNormalization()(L.Conv2D(filters, 1, use_bias=False)(h)))


ARCHS = {
    # 5x5 stem on 28x28 valid (24x24x8 = 4,608 B), then two 3x3 blocks, flatten 3x3xC, one Dense
    "c8_24_32": lambda h: L.Dense(10)(L.Flatten()(block(block(block(h, 8, 5, padding="valid"), 24, 3), 32, 3))),
    "c8_20_40": lambda h: L.Dense(10)(L.Flatten()(block(block(block(h, 8, 5, padding="valid"), 20, 3), 40, 3))),
    "c8_16_32_gap64": lambda h: L.Dense(10)(L.GlobalAveragePooling2D()(
        block(block(block(block(h, 8, 5, padding="valid"), 16, 3), 32, 3), 64, 3, pool=False))),
    # stride-2 stem (14x14x16 = 3,136 B), depthwise-separable blocks, global pooling: a smaller arena
    "s2_mobile": lambda h: L.Dense(10)(L.GlobalAveragePooling2D()(_separable(_separable(_separable(
        L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(h))),
        32, 2), 64, 1), 96, 2))),
    "teacher": lambda h: L.Dense(10)(L.Dropout(0.3)(L.Flatten()(block(block(block(h, 32, 5, padding="valid"), 64, 3),
                                                                    128, 3)))),
}


def build(arch: str) -> keras.Model:
    inp = keras.Input((28, 28, 1))
    return keras.Model(inp, ARCHS[arch](inp), name=arch)


def augment(x, rng):
    """Random shifts of up to 2 pixels (zero padded) and horizontal flips."""
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    out = np.empty_like(x)
    dy, dx = rng.integers(0, 5, len(x)), rng.integers(0, 5, len(x))
    for i in range(len(x)):
        out[i] = padded[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
    flip = rng.random(len(x)) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def fit(model, x, y, epochs, lr, seed, teacher=None, batch=128):
    rng = np.random.default_rng(seed)
    steps = epochs * (len(x) // batch)
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    trainer = model if teacher is None else Distiller(model, teacher, alpha=0.5, temperature=4.0)
    trainer.compile(keras.optimizers.Adam(schedule), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    for _ in range(epochs):  # fresh shifts and flips each epoch
        trainer.fit(augment(x, rng), y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="c8_24_32", choices=[a for a in ARCHS if a != "teacher"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--teacher-epochs", type=int, default=0, help="0: no distillation")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = fashion_mnist()
    x, xt = (a.reshape(-1, 28, 28, 1).astype("float32") for a in (x, xt))
    if x.max() > 1.5:  # raw pixels
        x, xt = x / 255.0, xt / 255.0
    started = time.time()
    teacher = None
    row = {"arch": args.arch, "epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
           "qat_epochs": args.qat_epochs}
    if args.teacher_epochs:
        teacher = fit(build("teacher"), x, y, args.teacher_epochs, args.lr, 1)
        teacher.compile(metrics=["accuracy"], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        row["teacher_accuracy"] = float(teacher.evaluate(xt, yt, verbose=0)[1])
    model = fit(build(args.arch), x, y, args.epochs, args.lr, 2, teacher)
    model.compile(metrics=["accuracy"], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    row["params"] = int(model.count_params())
    row["float_accuracy"] = float(model.evaluate(xt, yt, verbose=0)[1])
    out = Path(tempfile.mkdtemp(prefix="mcu_"))
    to_tflite(model, out / "ptq.tflite", "int8", representative_data=x[:500])
    row["ptq_accuracy"] = evaluate(out / "ptq.tflite", xt, yt).accuracy
    final = out / "ptq.tflite"
    if args.qat_epochs:
        qat = tfcompress.quantize(model)
        fit(qat, x, y, args.qat_epochs, args.lr / 10, 3, teacher)
        to_tflite(qat, out / "qat.tflite", "int8")
        row["qat_accuracy"] = evaluate(out / "qat.tflite", xt, yt).accuracy
        if row["qat_accuracy"] >= row["ptq_accuracy"]:
            final = out / "qat.tflite"
    micro = to_micro(final, out / "micro", name="model", num_samples=4)
    row.update(file=final.name, flash_bytes=final.stat().st_size, arena_bytes=micro.arena_total_bytes,
               tflm_identical=bool(micro.identical), seconds=round(time.time() - started))
    print(json.dumps(row), flush=True)
    log = Path(__file__).resolve().parent / "out" / "explore_mcu_target.jsonl"
    log.parent.mkdir(exist_ok=True)
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
