"""Training overhead of pruning, ours and tfmot's, measured side by side (issue 3).

    python benchmarks/bench_overhead.py --rounds 5

Each library alternates one epoch of plain ``fit`` and one epoch of pruned ``fit`` (LeNet-5-Caffe,
Fashion-MNIST, batch 128, PolynomialDecay to 90% over 60% of the pruned steps, frequency 100),
so that machine noise hits both alike; the ratio is median(pruned epoch) / median(plain epoch),
the first round (tracing) left out. tfmot runs the same loop under tf_keras in a subprocess
right after ours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    import numpy as np

    import tfcompress
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.schedules import PolynomialDecay

    data = common.load_data()
    steps = int(np.ceil(len(data.x_train) / args.batch_size)) * args.rounds
    plain = common.compile_model(common.lenet())
    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=int(0.6 * steps), frequency=100)
    pruned = common.compile_model(tfcompress.prune(common.lenet(), schedule=schedule))
    times: dict[str, list[float]] = {"plain": [], "pruned": []}
    callback = UpdatePruning()
    for _ in range(args.rounds):
        times["plain"].append(common.timed_fit(plain, data, 1, args.batch_size))
        times["pruned"].append(common.timed_fit(pruned, data, 1, args.batch_size, [callback]))
    ours_plain, ours_pruned = float(np.median(times["plain"][1:])), float(np.median(times["pruned"][1:]))
    rows = [{"library": f"tfcompress {tfcompress.__version__} (Keras 3)", "plain s/epoch": round(ours_plain, 2),
             "pruned s/epoch": round(ours_pruned, 2), "overhead": round(ours_pruned / ours_plain, 3),
             "epoch times plain": [round(t, 1) for t in times["plain"]],
             "epoch times pruned": [round(t, 1) for t in times["pruned"]]}]
    if not args.skip_peer:
        from peer_tfmot import run_peer

        peer = run_peer("overhead", data, str(common._OUT / "unused.tflite"), rounds=args.rounds,
                        batch_size=args.batch_size)
        rows.append({"library": f"tfmot {peer['tfmot']} (tf_keras)",
                     "plain s/epoch": round(peer["plain_seconds_per_epoch"], 2),
                     "pruned s/epoch": round(peer["seconds_per_epoch"], 2),
                     "overhead": round(peer["overhead_vs_plain_fit"], 3),
                     "epoch times plain": [round(t, 1) for t in peer["times"]["plain"]],
                     "epoch times pruned": [round(t, 1) for t in peer["times"]["pruned"]]})
    columns = ["library", "plain s/epoch", "pruned s/epoch", "overhead", "epoch times plain", "epoch times pruned"]
    notes = [f"{args.rounds} alternating rounds of one plain and one pruned epoch per library; medians of rounds "
             "2..N. Overhead = pruned / plain seconds per epoch, within the same library and process."]
    harness.record("03b_pruning_overhead", "Pruning: training overhead vs plain fit, side by side", columns,
                   rows, notes, extra={"rounds": args.rounds})
    print(harness.table(columns, rows))


if __name__ == "__main__":
    main()
