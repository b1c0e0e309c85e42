"""What the LeNet-5-Caffe / Fashion-MNIST benchmarks share: data, model, timed training, int8 export.

Each benchmark builds rows with :func:`export_row` (int8 TFLite accuracy on LiteRT, sizes,
non-zero parameters, MACs) and then measures every row's file in one interleaved LiteRT run with
:func:`add_latency`, so latencies are ratios measured side by side.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# explorations' JSON and the dense checkpoints they share (cached_dense_lenet); not results of record
EXPLORE_DIR = Path(__file__).resolve().parent / "out" / "explore"


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def calibration(self) -> np.ndarray:
        return self.x_train[:500]


def load_data(limit: int | None = None) -> Data:
    from tfcompress.datasets import fashion_mnist

    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    return Data(x_train, y_train, x_test, y_test)


def parse_pairs(text: str, cast=float) -> dict:
    """``"conv1=5,conv2=15"`` -> ``{"conv1": cast("5"), "conv2": cast("15")}`` (command-line lists)."""
    return {key: cast(value) for key, value in (item.split("=") for item in text.split(",") if item)}


def lenet(seed: int = 0, **widths: int):
    """LeNet-5-Caffe freshly initialised from ``seed``; ``widths``: conv1, conv2, fc1 (``lenet5_caffe``)."""
    import keras

    from tfcompress.models import lenet5_caffe

    keras.utils.set_random_seed(seed)
    return lenet5_caffe(**widths)


def compile_model(model, lr: float = 1e-3, ema_momentum: float = 0.0):
    """Adam ``lr``; with ``ema_momentum`` > 0 it keeps a moving average of the weights, which
    ``fit`` writes into the model when it ends."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(lr, use_ema=ema_momentum > 0, ema_momentum=ema_momentum or 0.99),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def cached_dense_lenet(data: Data, epochs: int, directory: Path | None = EXPLORE_DIR, batch_size: int = 128):
    """LeNet-5-Caffe trained ``epochs`` epochs (Adam 1e-3, seed 0), its weights cached in ``directory``
    so that runs started from the same dense model train it once; ``directory=None``: no cache."""
    model = compile_model(lenet())
    cache = directory / f"lenet_dense_{epochs}ep.weights.h5" if directory is not None else None
    if cache is not None and cache.exists():
        model.load_weights(cache)
        return model
    model.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, verbose=2)
    if cache is not None:
        directory.mkdir(parents=True, exist_ok=True)
        model.save_weights(cache)
    return model


def kept_channels(into: list):
    """A callback appending, after every epoch, the channels each Bayesian layer of the model in
    training keeps by its own threshold (``bayesian.structure``) and the loss to ``into``; printed."""
    import keras

    from tfcompress import bayesian

    class KeptChannels(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kept = {name: s["kept"] for name, s in bayesian.structure(self.model).items()}
            into.append({"epoch": epoch + 1, "kept": kept, "loss": round(float(logs["loss"]), 4)})
            print(into[-1], flush=True)

    return KeptChannels()


def epoch_accuracies(model, data: Data, into: list, label: str | None = None):
    """A callback appending ``model``'s Keras test accuracy to ``into`` after every epoch
    (printed after ``label`` when one is given)."""
    import keras

    class EpochAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            into.append(round(keras_accuracy(model, data), 4))
            if label:
                print(f"{label} {epoch + 1}: {into[-1]}", flush=True)

    return EpochAccuracy()


def timed_fit(model, data: Data, epochs: int, batch_size: int = 128, callbacks=None) -> float:
    """Seconds per epoch, the first epoch (tracing) excluded when there are several."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    timer = EpochTimer()
    model.fit(
        data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, verbose=2,
        callbacks=[*(callbacks or []), timer],
    )
    steady = timer.times[1:] or timer.times
    return float(np.median(steady))


def keras_accuracy(model, data: Data) -> float:
    return float(model.evaluate(data.x_test, data.y_test, verbose=0, batch_size=1000)[1])


_OUT = Path(tempfile.mkdtemp(prefix="tfcompress_bench_"))

# Dirichlet's switch settings in every Bayesian run (the layer defaults are prior 0.1)
BAYESIAN_LAYER_DEFAULTS = {"dirichlet": {"prior_concentration": 0.5, "estimator": "reparameterized"}}


@dataclass
class BayesianRun:
    model: object  # the trained Bayesian model
    small: object  # bayesian.strip + shrink of it, compiled
    report: object  # shrink's report
    seconds: int  # training time of the Bayesian model


def train_bayesian(trained, method: str, data: Data, *, epochs: int, beta: float, batch_size: int = 128,
                   lr: float | None = None, tau: float = 0.05, theta: float = 0.2, callbacks=(), verbose: int = 2,
                   layer_kwargs: dict | None = None, keep: dict[str, int] | None = None,
                   layer_scales: dict[str, float] | str | None = None,
                   gradual: tuple[float, float] | None = None, teacher=None) -> BayesianRun:
    """The Bayesian-pruning protocol both bench_bayesian.py and explore_bayesian.py run.

    ``bayesian.convert`` of ``trained``; ``epochs`` of training (Adam ``lr``: 1e-2 for Dirichlet,
    whose switches alone train, else 1e-3), the KL weight warmed up linearly over the first half
    to ``beta`` (none for slimming), VCP pruning after each epoch (``tau``, ``theta``); BN layers
    that convert inserted are recalibrated on 1,000 training images; with ``keep``
    (``{"conv1": 5, ...}``) the model is cut to that sub-architecture by posterior importance
    (``bayesian.prune_to``, step 3 of Dirichlet pruning); then strip and shrink. ``layer_scales``
    multiplies the KL weight of chosen Bayesian layers (``KLAnnealing(layer_scales=...)``).
    ``gradual=(begin, end)`` (in epochs) cuts to ``keep`` gradually during the Bayesian epochs
    instead (``callbacks.PosteriorPruning``, Zhu and Gupta's cubic schedule). With ``teacher`` the
    Bayesian epochs distil from it too (``Distiller``, temperature 4, alpha 0.1; the KL keeps its weight).
    """
    from tfcompress import bayesian, shrink
    from tfcompress.batchnorm import recalibrate_batchnorm
    from tfcompress.callbacks import KLAnnealing, PosteriorPruning, VariationalPruning

    kwargs = {**BAYESIAN_LAYER_DEFAULTS.get(method, {}), **(layer_kwargs or {})}
    model = bayesian.convert(trained, method, dataset_size=len(data.x_train), **kwargs)
    schedule = [] if method == "slimming" else [KLAnnealing(warmup_epochs=max(1, epochs // 2), max_weight=beta,
                                                              layer_scales=layer_scales)]
    if method == "vcp":
        schedule.append(VariationalPruning(tau=tau, theta=theta))
    if gradual:
        if not keep:
            raise ValueError("gradual pruning needs keep, the sub-architecture it ends at")
        steps_per_epoch = int(np.ceil(len(data.x_train) / batch_size))
        schedule.append(PosteriorPruning(keep, begin_step=int(gradual[0] * steps_per_epoch),
                                         end_step=int(gradual[1] * steps_per_epoch), frequency=50))
    trainer = model
    if teacher is not None:
        from tfcompress.distillation import Distiller

        trainer = Distiller(model, teacher, temperature=4.0, alpha=0.1)
    compile_model(trainer, lr if lr is not None else (1e-2 if method == "dirichlet" else 1e-3))
    started = time.perf_counter()
    trainer.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, verbose=verbose,
              callbacks=[*schedule, *callbacks])
    seconds = round(time.perf_counter() - started)
    if method in ("vcp", "slimming"):
        # the BN layers inserted into LeNet start with identity statistics: set them to the data's
        recalibrate_batchnorm(model, data.x_train[:1000])
    if keep:
        bayesian.prune_to(model, keep)
    plain = bayesian.strip(model, slimming_threshold=1e-2 if method == "slimming" else None)
    small, report = shrink(plain, return_report=True)
    return BayesianRun(model, compile_model(small), report, seconds)


def augmented(data: Data, batch_size: int = 128, seed: int = 0, shift: int = 2):
    """Shuffled training batches, each image flipped left-right at random and shifted by up to
    ``shift`` whole pixels (0: flips only; Fashion-MNIST's garments are left-right symmetric classes). Teacher and student see the
    same augmented batch when distilling: Beyer et al. 2022 ("Knowledge distillation: A good teacher
    is patient and consistent") match the teacher's function on such views, which keep giving soft
    targets after the teacher has memorised the training images themselves."""
    import keras
    import tensorflow as tf

    # nearest: whole-pixel shifts (bilinear would also blur each shifted image); distinct seeds, or
    # the flips and the shifts would be drawn from one stream
    views = keras.Sequential([keras.layers.RandomFlip("horizontal", seed=seed)])
    if shift:
        views.add(keras.layers.RandomTranslation(shift / 28, shift / 28, fill_mode="constant",
                                                 interpolation="nearest", seed=seed + 1))
    dataset = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
    dataset = dataset.shuffle(len(data.x_train), seed=seed).batch(batch_size)
    return dataset.map(lambda x, y: (views(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def fine_tune(model, data: Data, epochs: int, *, teacher=None, temperature: float = 4.0, alpha: float = 0.1,
              batch_size: int = 128, lr: float = 1e-3, cosine: bool = False, augment_shift: int | None = None,
              ema_momentum: float = 0.0, hints: dict[str, str] | None = None, hint_weight: float = 1.0,
              callbacks=(), verbose: int = 2) -> None:
    """Train ``model`` ``epochs`` more (Adam ``lr``, decayed to 0 along a cosine with ``cosine``),
    on the labels, or with a ``teacher`` by knowledge distillation from it
    (``tfcompress.distillation.Distiller``, Hinton et al. 2015); with ``augment_shift`` (pixels, 0: flips
    only) on flipped and shifted views (:func:`augmented`); with ``ema_momentum`` it ends on the moving
    average of its weights (:func:`compile_model`); with ``hints`` and a teacher, FitNets hints too
    (``Distiller(hints=, hint_weight=)``). ``model`` ends compiled (constant lr)."""
    import keras

    if not epochs:
        return
    rate = lr
    if cosine:
        steps = int(np.ceil(len(data.x_train) / batch_size)) * epochs
        rate = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    trainer = model
    if teacher is not None:
        from tfcompress.distillation import Distiller

        trainer = Distiller(model, teacher, temperature=temperature, alpha=alpha, hints=hints, hint_weight=hint_weight)
    compile_model(trainer, rate, ema_momentum)
    if augment_shift is not None:
        trainer.fit(augmented(data, batch_size, shift=augment_shift), epochs=epochs, verbose=verbose, callbacks=list(callbacks))
    else:
        trainer.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, verbose=verbose,
                    callbacks=list(callbacks))
    compile_model(model, lr)


def export_row(name: str, model, data: Data, **extra) -> dict:
    """Export ``model`` to full int8, measure it on LiteRT, count its parameters and MACs."""
    from tfcompress.export import evaluate, to_tflite
    from tfcompress.export.tflite_file import load_tflite
    from tfcompress.metrics import summarize

    path = _OUT / f"{name.replace(' ', '_').replace('/', '_').replace(':', '-')}.tflite"
    report = to_tflite(model, path, "int8", representative_data=data.calibration)
    summary = summarize(model)
    stats = load_tflite(path).weight_stats()
    row = {
        "model": name,
        "keras accuracy": round(keras_accuracy(model, data), 4),
        "int8 accuracy (LiteRT)": round(evaluate(path, data.x_test, data.y_test).accuracy, 4),
        "params": summary.params,
        "non-zero params": summary.nonzero_params,
        "MACs": summary.macs,
        "int8 size (bytes)": report.size_bytes,
        "int8 gzip (bytes)": report.gzip_size_bytes,
        "int8 zero weights": stats["weight_zeros"],
        "_path": str(path),
    }
    row.update(extra)
    return row


def add_latency(rows: list[dict], runs: int = 500, column: str = "p50 ms (1 thread)") -> None:
    """Interleaved LiteRT latency of every row's file (1 thread, XNNPACK), ratio to the first."""
    from tfcompress.export import benchmark

    with_files = [r for r in rows if r.get("_path")]
    report = benchmark([r["_path"] for r in with_files], runs=runs, warmup=50, threads=1)
    for row, result in zip(with_files, report.results, strict=True):
        row[column] = round(result.p50_ms, 4)
        row["latency vs first"] = round(result.ratio_to_first, 3)


def public(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
