r"""Quick start: train, evaluate and look at a small ATSS detector in minutes.

    bash quickstart.sh                  # sets up a virtual environment, then runs this
    python tools/quick_start.py         # in an environment with the requirements

No download: the data is the built-in synthetic "shapes" dataset
(``atss_core/data/synthetic.py``). The steps, each of which is an ordinary
command of the framework (printed as it runs, so that you can repeat it):

1. generate the dataset under ``--data-dir`` (``$ATSS_DATA_DIR``, else
   ``datasets/``) as ``shapes/`` unless it is already there;
2. train the CPU-friendly config ``configs/atss/quick_start/atss_R_18_shapes.yaml``
   with ``tools/train_net.py`` (on the GPU when torch sees one);
3. evaluate the final checkpoint with ``tools/test_net.py`` (COCO metrics);
4. draw the detections on validation images with the Python predictor
   (``atss_core/engine/predictor.py``, what the demo uses);
5. plot the training losses (``tools/plot_losses.py``).

Outputs, in ``--output-dir`` (default ``training_dir/quick_start``):
``model_final.pth``, ``log.txt`` / ``test_log.txt``, ``train_metrics.jsonl``,
``inference/shapes_val/{bbox.json,metrics.json}``, ``detections/*.jpg`` (one
picture per image and ``detections/grid.png``), ``losses.png`` and
``summary.json`` (AP, AP50, timings, paths).

Running it again reuses the dataset and resumes the run in ``--output-dir``
(a finished run is only evaluated and drawn again); ``--fresh`` starts over.
Arguments after the options are config overrides (``KEY VALUE ...``) given to
both the training and the evaluation, e.g. ``SOLVER.MAX_ITER 300``.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, REPO_ROOT)
if TOOLS_DIR not in sys.path:
    sys.path.insert(0, TOOLS_DIR)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from atss_core.config import ConfigError, cfg as default_cfg, validate_config  # noqa: E402
from atss_core.config.paths_catalog import data_root  # noqa: E402
from atss_core.data.synthetic import (  # noqa: E402
    DEFAULTS,
    SyntheticDatasetError,
    ensure_shapes_dataset,
    split_paths,
)
from atss_core.utils.io import atomic_write_json  # noqa: E402
from plot_losses import plot_losses  # noqa: E402

DEFAULT_CONFIG = os.path.join("configs", "atss", "quick_start", "atss_R_18_shapes.yaml")
TEST_DATASET = "shapes_val"
# Written by this script: a folder that has it is a quick start's and
# ``--fresh`` may delete it.
MARKER = "summary.json"
# Lines of the tools' console output shown while they run (without
# --verbose; all of it is in the output folder's log.txt / test_log.txt):
# progress, warnings, errors and the metrics tables, not progress bars.
_SHOWN = ("iter: ", "Total training time", "Testing time", "WARNING", "ERROR", "Error",
          "Warning", "Traceback", " | ")
_HIDDEN = ("it/s]", "s/it]", "Average Precision", "Average Recall")


def _shown(line):
    return any(k in line for k in _SHOWN) and not any(k in line for k in _HIDDEN)


class QuickStartError(RuntimeError):
    """A step failed; the message says which and where its log is."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train, evaluate and visualise a small ATSS detector on the built-in "
                    "synthetic dataset",
        epilog="Trailing KEY VALUE pairs override the config, e.g. SOLVER.MAX_ITER 300.")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"config to train (default: {DEFAULT_CONFIG})")
    parser.add_argument("--output-dir", default=os.path.join("training_dir", "quick_start"),
                        help="where the run goes (default: training_dir/quick_start)")
    parser.add_argument("--data-dir", default=None,
                        help="data root that receives shapes/ (default: $ATSS_DATA_DIR, else datasets/)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--num-train", type=int, default=DEFAULTS["num_train"],
                        help=f"training images to generate (default {DEFAULTS['num_train']})")
    parser.add_argument("--num-val", type=int, default=DEFAULTS["num_val"],
                        help=f"validation images to generate (default {DEFAULTS['num_val']})")
    parser.add_argument("--image-size", type=int, default=DEFAULTS["image_size"],
                        help=f"side of the generated images in pixels (default {DEFAULTS['image_size']})")
    parser.add_argument("--dataset-seed", type=int, default=DEFAULTS["seed"],
                        help="seed of the generated dataset")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--num-pictures", type=int, default=8,
                        help="validation images to draw the detections on (default 8)")
    parser.add_argument("--score-threshold", type=float, default=0.4,
                        help="draw detections scoring at least this (default 0.4)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the output folder of an earlier quick start first")
    parser.add_argument("--verbose", action="store_true",
                        help="show all the output of training and evaluation")
    parser.add_argument("--setup-seconds", type=float, default=0.0, metavar="S",
                        help="time the set-up took, counted in the total (quickstart.sh passes it)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides (KEY VALUE ...) for training and evaluation")
    args = parser.parse_args(argv)
    if args.num_pictures < 0:
        parser.error(f"--num-pictures must be >= 0, got {args.num_pictures}")
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    return args


def resolve_device(choice):
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise QuickStartError("--device cuda, but torch sees no GPU; use --device cpu (or auto)")
    return choice


def load_config(config_file, overrides):
    """The merged, validated config (what train_net.py / test_net.py will use)."""
    cfg = default_cfg.clone()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(overrides))
    validate_config(cfg)
    cfg.freeze()
    return cfg


def tool_environment(data_dir, device):
    """Environment of the tools: the data root, and on the CPU the passive
    OpenMP wait policy unless the user chose one (with the default, idle
    worker threads spin, which slows training down several times as soon as
    another process competes for the cores)."""
    env = dict(os.environ, ATSS_DATA_DIR=data_dir)
    if device == "cpu":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _quote(arg):
    return arg if arg and all(c.isalnum() or c in "-_./=:,()" for c in arg) else repr(arg)


def run_tool(title, command, env, verbose, log_hint):
    """Run ``command`` from the repository root, echoing its progress lines;
    raises :class:`QuickStartError` with the end of its output when it fails.
    Returns the seconds it took."""
    print(f"\n== {title}\n   $ ATSS_DATA_DIR={_quote(env['ATSS_DATA_DIR'])} "
          + " ".join(_quote(c) for c in command), flush=True)
    start = time.perf_counter()
    tail = []
    with subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            tail = (tail + [line])[-40:]
            if verbose or _shown(line):
                print("   " + line.rstrip(), flush=True)
        returncode = process.wait()
    if returncode != 0:
        raise QuickStartError(
            f"{title} failed (exit status {returncode}). Last lines of its output:\n"
            + "".join(tail) + f"\nFull log: {log_hint}"
        )
    return time.perf_counter() - start


def draw_pictures(cfg, weights, data_dir, out_dir, num_pictures, score_threshold):
    """Detections of the trained model drawn on the first ``num_pictures``
    validation images (``atss_core.engine.predictor.Predictor``, the demo's
    inference path), written to ``out_dir/<name>.jpg`` and tiled into
    ``out_dir/grid.png``. Returns the paths written, the grid first."""
    from atss_core.engine.predictor import Predictor, read_image
    from atss_core.utils.visualize import draw_detections

    image_dir = split_paths(data_dir, "shapes", "val")[0]
    names = sorted(os.listdir(image_dir))[:num_pictures]
    if not names:
        return []
    images = []
    for name in names:
        try:
            images.append(read_image(os.path.join(image_dir, name)))
        except (OSError, ValueError) as e:
            raise QuickStartError(f"cannot read {e}; regenerate the dataset with: "
                                  "python -m atss_core.data.synthetic --force") from None
    # The predictor names the classes from the catalog's annotation file,
    # which lies under the data root.
    previous = os.environ.get("ATSS_DATA_DIR")
    os.environ["ATSS_DATA_DIR"] = data_dir
    try:
        predictor = Predictor(cfg, weights=weights, score_threshold=score_threshold)
    finally:
        if previous is None:
            del os.environ["ATSS_DATA_DIR"]
        else:
            os.environ["ATSS_DATA_DIR"] = previous
    os.makedirs(out_dir, exist_ok=True)
    paths, drawn_images = [], []
    for name, image, detections in zip(names, images, predictor.predict(images)):
        drawn = draw_detections(image, detections)
        path = os.path.join(out_dir, os.path.splitext(name)[0] + ".jpg")
        _write_image(path, drawn)
        paths.append(path)
        drawn_images.append(drawn)
    columns = min(4, len(drawn_images))
    height = max(d.shape[0] for d in drawn_images)
    width = max(d.shape[1] for d in drawn_images)
    rows = -(-len(drawn_images) // columns)
    grid = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for i, drawn in enumerate(drawn_images):
        r, c = divmod(i, columns)
        grid[r * height:r * height + drawn.shape[0], c * width:c * width + drawn.shape[1]] = drawn
    grid_path = os.path.join(out_dir, "grid.png")
    _write_image(grid_path, grid)
    return [grid_path] + paths


def _write_image(path, image):
    """cv2.imwrite, atomically (temporary file in the same folder, renamed)."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.{os.getpid()}.tmp{ext}"
    if not cv2.imwrite(tmp, image):
        raise QuickStartError(f"could not write {path}")
    os.replace(tmp, path)


def _remove_previous_run(output_dir):
    """Delete the output folder of an earlier quick start (recognised by its
    ``summary.json`` or the ``config.yml`` that train_net.py writes)."""
    if not os.path.isdir(output_dir):
        return
    ours = any(os.path.isfile(os.path.join(output_dir, n)) for n in (MARKER, "config.yml"))
    if os.listdir(output_dir) and not ours:
        raise QuickStartError(
            f"--fresh: {output_dir} does not look like a quick start's output folder (no "
            f"{MARKER} or config.yml); not deleting it. Choose another --output-dir.")
    shutil.rmtree(output_dir)


def main(argv=None):
    args = parse_args(argv)
    total_start = time.perf_counter()
    config_file = args.config_file
    if not os.path.isabs(config_file) and not os.path.isfile(config_file):
        config_file = os.path.join(REPO_ROOT, config_file)
    if not os.path.isfile(config_file):
        raise QuickStartError(f"--config-file {args.config_file} not found")
    config_file = os.path.abspath(config_file)
    output_dir = os.path.abspath(args.output_dir)
    data_dir = os.path.abspath(args.data_dir or data_root())
    device = resolve_device(args.device)
    # Config overrides of both tools: the device and output folder, then the user's.
    tail = ["MODEL.DEVICE", device, "OUTPUT_DIR", output_dir, *args.opts]
    cfg = load_config(config_file, tail)
    for name in tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST):
        if name not in ("shapes_train", "shapes_val"):
            raise QuickStartError(
                f"the quick start trains on the synthetic shapes dataset, but the config names "
                f"{name!r}; for other data use tools/train_net.py and tools/test_net.py "
                "(docs/QUICK_START.md, 'The same commands on COCO')")
    if args.fresh:
        _remove_previous_run(output_dir)
    env = tool_environment(data_dir, device)

    print(f"== Dataset: synthetic shapes under {data_dir}", flush=True)
    start = time.perf_counter()
    folder, generated = ensure_shapes_dataset(
        data_dir, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
        seed=args.dataset_seed)
    dataset_time = time.perf_counter() - start
    print(f"   {'generated' if generated else 'reusing'} {folder} ({args.num_train} train / "
          f"{args.num_val} val images of {args.image_size}x{args.image_size}, "
          f"{dataset_time:.1f} s)", flush=True)

    python = sys.executable
    in_repo = os.path.commonpath([config_file, REPO_ROOT]) == REPO_ROOT
    config_arg = os.path.relpath(config_file, REPO_ROOT) if in_repo else config_file
    train_time = run_tool(
        f"Training on {device} (log: {os.path.join(output_dir, 'log.txt')})",
        [python, os.path.join("tools", "train_net.py"), "--config-file", config_arg, "--skip-test",
         "--seed", str(args.seed), *tail],
        env, args.verbose, os.path.join(output_dir, "log.txt"))
    eval_time = run_tool(
        "Evaluation (COCO metrics) of the last checkpoint",
        [python, os.path.join("tools", "test_net.py"), "--config-file", config_arg,
         "--use-last-checkpoint", "--per-class-ap", *tail],
        env, args.verbose, os.path.join(output_dir, "test_log.txt"))

    metrics_path = os.path.join(output_dir, "inference", TEST_DATASET, "metrics.json")
    with open(metrics_path) as f:
        metrics = json.load(f)

    print("\n== Pictures and loss plot", flush=True)
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        weights = f.read().strip()
    if not os.path.isabs(weights):
        weights = os.path.join(output_dir, weights)
    start = time.perf_counter()
    pictures = draw_pictures(cfg, weights, data_dir, os.path.join(output_dir, "detections"),
                             args.num_pictures, args.score_threshold)
    loss_plot = plot_losses(os.path.join(output_dir, "train_metrics.jsonl"),
                            os.path.join(output_dir, "losses.png"), title="quick start: training losses")
    draw_time = time.perf_counter() - start
    total_time = time.perf_counter() - total_start + args.setup_seconds

    summary = {
        "dataset": folder,
        "config": config_file,
        "device": device,
        "overrides": list(args.opts),
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "per_class_AP": metrics.get("per_class_AP", {}),
        "metrics": metrics_path,
        "weights": weights,
        "pictures": pictures[0] if pictures else None,
        "loss_plot": loss_plot,
        "seconds": {"setup": round(args.setup_seconds, 1), "dataset": round(dataset_time, 1),
                    "train": round(train_time, 1),
                    "evaluate": round(eval_time, 1), "draw": round(draw_time, 1),
                    "total": round(total_time, 1)},
    }
    atomic_write_json(summary, os.path.join(output_dir, MARKER), indent=2)

    setup = f"set-up {args.setup_seconds:.0f} s, " if args.setup_seconds else ""
    print(f"\n== Done in {total_time / 60:.1f} min in all ({setup}dataset {dataset_time:.0f} s, "
          f"training {train_time:.0f} s, evaluation {eval_time:.0f} s, pictures and plot {draw_time:.0f} s)")
    print(f"   AP {100 * metrics['AP']:.1f}   AP50 {100 * metrics['AP50']:.1f}   "
          f"AP75 {100 * metrics['AP75']:.1f}   on {metrics['num_images']} validation images")
    for name, ap in summary["per_class_AP"].items():
        print(f"     {name:<10} AP {100 * ap:.1f}")
    if pictures:
        print(f"   detections: {pictures[0]} (and {len(pictures) - 1} pictures beside it)")
    print(f"   losses:     {loss_plot}")
    print(f"   weights:    {weights}")
    print(f"   summary:    {os.path.join(output_dir, MARKER)}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (QuickStartError, ConfigError, SyntheticDatasetError) as e:
        sys.exit(f"quick_start.py: error: {e}")
