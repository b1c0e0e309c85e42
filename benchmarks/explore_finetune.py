"""Fine-tune one cut Bayesian model several ways (a tuning aid, issue 4).

    python benchmarks/explore_finetune.py --temperature 2
    python benchmarks/explore_finetune.py --ema 0.999 --threads 1
    python benchmarks/explore_finetune.py --dense dense-row --gradual 1,4 --epochs 60 --augment-shift 0

The ``--method`` model (SBP by default) cut to ``--keep`` (``common.train_bayesian``:
``--bayesian-epochs``, 6 by default, at KL weight ``--beta``, from the dense model; the channels
its own threshold keeps are printed after every epoch) is trained once per setting and cached in
``benchmarks/out/explore``; every call then fine-tunes a copy of that same small model by
distillation from the same dense teacher, so two settings differ by the setting alone and not by
a different Bayesian run. The dense model is the 25-epoch
checkpoint (``--dense pretrained``, the protocol of explore_bayesian.py) or, with ``--dense
dense-row``, that checkpoint trained on as bench_bayesian.py trains its dense row (6 epochs at
Adam 1e-3, then 15 along a cosine from 3e-3), optionally on flipped views
(``--dense-augment-shift``) or with label smoothing (``--dense-label-smoothing``): a teacher that
has not memorised its training images gives soft targets that carry more than the labels.
Writes ``benchmarks/out/explore/finetune_<setting>.json`` (Keras accuracy after every epoch,
LiteRT int8 accuracy at the end); never touches RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def dense_row(pretrained, data, cache: Path, augment_shift: int | None, label_smoothing: float):
    """``pretrained`` trained on as bench_bayesian.py trains its dense row: 6 epochs at Adam 1e-3,
    then 15 along a cosine from 3e-3 (cached in ``cache``)."""
    import keras
    import numpy as np

    model = common.lenet()
    if cache.exists():
        model.load_weights(cache)
        return common.compile_model(model)
    model.set_weights(pretrained.get_weights())
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    y_train = keras.utils.to_categorical(data.y_train, 10)
    steps = int(np.ceil(len(data.x_train) / 128)) * 15
    for epochs, rate in ((6, 1e-3), (15, keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps))):
        model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss, metrics=["accuracy"])
        if augment_shift is None:
            model.fit(data.x_train, y_train, batch_size=128, epochs=epochs, verbose=2)
        else:
            onehot = common.Data(data.x_train, y_train, data.x_test, data.y_test)
            model.fit(common.augmented(onehot, shift=augment_shift), epochs=epochs, verbose=2)
    model.save_weights(cache)
    return common.compile_model(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="sbp", choices=["vcp", "dirichlet", "sbp", "sparse_vd", "bc"])
    parser.add_argument("--keep", default="conv1=6,conv2=13,fc1=55")
    parser.add_argument("--beta", type=float, default=1.0, help="KL weight of the Bayesian phase (KLAnnealing)")
    parser.add_argument("--bayesian-epochs", type=int, default=6, help="epochs of the Bayesian phase")
    parser.add_argument("--stop-after", type=int, default=0,
                        help="end the Bayesian phase after this epoch, its KL warm-up still planned over "
                             "--bayesian-epochs (0: run them all)")
    parser.add_argument("--gradual", default="", metavar="BEGIN,END",
                        help="cut to --keep gradually from epoch BEGIN to END of the Bayesian phase "
                             "(callbacks.PosteriorPruning) instead of at its end, e.g. '1,4'")
    parser.add_argument("--bayesian-distill", action="store_true",
                        help="the Bayesian phase distils from the dense model too (common.train_bayesian(teacher=))")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of the hard-label loss")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam, decayed to 0 along a cosine")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--augment-shift", type=int, default=None,
                        help="fine-tune on flipped views shifted by up to this many pixels, the teacher seeing "
                             "the same views (common.augmented; 0: flips only); default: the plain images")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="keep an exponential moving average of the weights with this momentum and "
                             "end on it (Adam(use_ema=True)); 0: off")
    parser.add_argument("--hints", default="", help="FitNets hints, student=teacher layer names, e.g. "
                        "'conv2=conv2' (Distiller(hints=...)); default: none")
    parser.add_argument("--hint-weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense", choices=["pretrained", "dense-row"], default="pretrained",
                        help="the model --method converts and the teacher: the 25-epoch checkpoint or the dense row")
    parser.add_argument("--dense-augment-shift", type=int, default=None,
                        help="--dense dense-row: train it on flipped views shifted by up to this many pixels")
    parser.add_argument("--dense-label-smoothing", type=float, default=0.0, help="--dense dense-row")
    args = parser.parse_args()
    if args.dense != "dense-row" and (args.dense_augment_shift is not None or args.dense_label_smoothing):
        parser.error("--dense-augment-shift and --dense-label-smoothing train the dense row: add --dense dense-row")

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    from tfcompress._io import write_text_atomic

    out = common.EXPLORE_DIR
    out.mkdir(parents=True, exist_ok=True)
    data = common.load_data()
    dense = common.cached_dense_lenet(data, 25)
    dense_name = "pretrained25"
    if args.dense == "dense-row":
        dense_name = ("denserow" + (f"_shift{args.dense_augment_shift}" if args.dense_augment_shift is not None else "")
                      + (f"_ls{args.dense_label_smoothing:g}" if args.dense_label_smoothing else ""))
        dense = dense_row(dense, data, out / f"lenet_{dense_name}.weights.h5", args.dense_augment_shift,
                          args.dense_label_smoothing)
    keep = common.parse_pairs(args.keep, int)
    cut_path = out / (f"{args.method}{'' if args.beta == 1 else f'{args.beta:g}'}"
                      f"{'' if args.bayesian_epochs == 6 else f'_{args.bayesian_epochs}ep'}"
                      f"{f'_stop{args.stop_after}' if args.stop_after else ''}"
                      f"{'_gradual' + args.gradual.replace(',', '-') if args.gradual else ''}"
                      f"{'_kd' if args.bayesian_distill else ''}_cut_"
                      f"{'-'.join(str(v) for v in keep.values())}_{dense_name}.keras")
    if not cut_path.exists():
        class StopAfter(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == args.stop_after:
                    self.model.stop_training = True

        # before prune_to: what the method's own threshold keeps
        run = common.train_bayesian(dense, args.method, data, epochs=args.bayesian_epochs, beta=args.beta,
                                    keep=keep, callbacks=[common.kept_channels([]), StopAfter()], verbose=2,
                                    gradual=tuple(float(v) for v in args.gradual.split(",")) if args.gradual else None,
                                    teacher=dense if args.bayesian_distill else None)
        run.small.save(cut_path)
    small = common.compile_model(keras.saving.load_model(cut_path))

    keras.utils.set_random_seed(args.seed)
    accuracies = [round(common.keras_accuracy(small, data), 4)]
    started = time.perf_counter()
    common.fine_tune(small, data, args.epochs, teacher=dense, temperature=args.temperature, alpha=args.alpha,
                     batch_size=args.batch_size, lr=args.lr, cosine=True, ema_momentum=args.ema,
                     augment_shift=args.augment_shift,
                     hints=common.parse_pairs(args.hints, str) or None, hint_weight=args.hint_weight,
                     callbacks=[common.epoch_accuracies(small, data, accuracies, "epoch")], verbose=0)
    seconds = round(time.perf_counter() - started)
    # with --ema, fit ends by writing the averaged weights into the model: "keras accuracy" is theirs
    row = common.export_row("explore", small, data)
    hint_tag = args.hints.replace(",", "+").replace("=", "-")
    setting = (f"{cut_path.stem}_T{args.temperature:g}_a{args.alpha:g}_lr{args.lr:g}_e{args.epochs}_b{args.batch_size}"
               f"_ema{args.ema:g}_s{args.seed}"
               f"{'' if args.augment_shift is None else f'_aug{args.augment_shift}'}"
               f"{f'_hints{hint_tag}w{args.hint_weight:g}' if args.hints else ''}")
    result = {"command": " ".join(sys.argv), "setting": setting, "cut model": cut_path.name,
              "dense keras accuracy": round(common.keras_accuracy(dense, data), 4),
              "keras accuracy after 0..E epochs": accuracies, "final keras accuracy": row["keras accuracy"],
              "int8 accuracy (LiteRT)": row["int8 accuracy (LiteRT)"], "fine-tuning s": seconds}
    write_text_atomic(out / f"finetune_{setting}.json", json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
