r"""Plot the training losses and learning rate of a run.

    python tools/plot_losses.py training_dir/quick_start            # -> .../losses.png
    python tools/plot_losses.py run/train_metrics.jsonl --out losses.png --smooth 50

Reads ``OUTPUT_DIR/train_metrics.jsonl``, which ``tools/train_net.py`` writes:
one JSON object per iteration with ``iteration``, the loss terms
(``loss_cls``, ``loss_reg``, ``loss_centerness``), their sum ``loss``, ``lr``,
``time`` and ``data_time``. A resumed run appends to the file; when an
iteration appears more than once (it ran again after a resume), its last
record is used. Matplotlib runs with the Agg backend, so no display is needed.
"""
import argparse
import json
import os
import sys

import numpy as np

_NOT_LOSSES = {"iteration", "lr", "time", "data_time"}


class MetricsFileError(ValueError):
    """A metrics file that is missing, empty or malformed."""


def load_metrics(path):
    """Columns of a ``train_metrics.jsonl`` file, sorted by iteration.

    Returns:
        dict: ``"iteration"`` int64 [N] and one float64 [N] array per other key
        (loss terms, ``loss``, ``lr``, ...), keys present in every record only.
    """
    if not os.path.isfile(path):
        raise MetricsFileError(
            f"{path} not found: it is written by tools/train_net.py as OUTPUT_DIR/train_metrics.jsonl; "
            "pass a training OUTPUT_DIR or the file itself"
        )
    records = {}
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                iteration = int(record["iteration"])
            except (ValueError, KeyError, TypeError) as e:
                raise MetricsFileError(
                    f"{path}, line {line_number}: not a metrics record with an 'iteration' ({e})"
                ) from None
            records[iteration] = record
    if not records:
        raise MetricsFileError(f"{path} has no records: has the training logged an iteration yet?")
    iterations = sorted(records)
    keys = set.intersection(*(set(r) for r in records.values())) - {"iteration"}
    columns = {"iteration": np.asarray(iterations, dtype=np.int64)}
    for key in sorted(keys):
        columns[key] = np.asarray([records[i][key] for i in iterations], dtype=np.float64)
    return columns


def moving_average(values, window):
    """Trailing mean over ``window`` values (fewer at the start), same length."""
    window = max(1, min(int(window), len(values)))
    cumulative = np.cumsum(np.insert(np.asarray(values, dtype=np.float64), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def smoothing_window(smooth, num_iterations):
    """The moving-average window actually used: ``smooth``, but at most a tenth
    of the run, so that a short run is not averaged flat (1: no smoothing)."""
    return max(1, min(int(smooth), num_iterations // 10))


def plot_losses(metrics_path, out_path, smooth=20, title=None):
    """Write a PNG with the loss terms and their sum (raw, faint; smoothed over
    :func:`smoothing_window` iterations, solid) above the learning rate, the
    legend beside the plot. Returns ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = load_metrics(metrics_path)
    iterations = columns["iteration"]
    window = smoothing_window(smooth, len(iterations))
    losses = ["loss"] + sorted(k for k in columns if k not in _NOT_LOSSES and k != "loss")
    figure, (ax_loss, ax_lr) = plt.subplots(
        2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for index, key in enumerate(losses):
        colour = f"C{index}"
        if window > 1:
            ax_loss.plot(iterations, columns[key], color=colour, alpha=0.25, linewidth=0.8)
        ax_loss.plot(iterations, moving_average(columns[key], window), color=colour,
                     linewidth=2.0 if key == "loss" else 1.5, label=key)
    ax_loss.set_ylabel(f"loss (mean of {window} iterations)" if window > 1 else "loss")
    ax_loss.set_yscale("log")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_title(title or f"training losses: {metrics_path}", fontsize=10)
    if "lr" in columns:
        ax_lr.plot(iterations, columns["lr"], color="k")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(True, alpha=0.3)
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    # Atomic: render to a temporary file in the same folder, then rename.
    tmp = os.path.join(folder, f".{os.path.basename(out_path)}.{os.getpid()}.tmp.png")
    try:
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, out_path)
    finally:
        plt.close(figure)
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot the training losses of a run")
    parser.add_argument("path", help="a training OUTPUT_DIR or its train_metrics.jsonl")
    parser.add_argument("--out", default="", help="PNG to write (default: losses.png beside the metrics)")
    parser.add_argument("--smooth", type=int, default=20,
                        help="moving-average window in iterations, at most a tenth of the run (default 20)")
    args = parser.parse_args(argv)
    path = os.path.join(args.path, "train_metrics.jsonl") if os.path.isdir(args.path) else args.path
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(path)), "losses.png")
    if args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")
    try:
        plot_losses(path, out, smooth=args.smooth)
    except MetricsFileError as e:
        sys.exit(f"plot_losses.py: error: {e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
