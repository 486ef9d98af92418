r"""Before/after: this working tree against another revision, side by side.

    python benchmarks/compare_revisions.py --baseline e5ea602 [--pairs 5] [--only infer train select]

The baseline revision is checked out as a git worktree under
``build/compare/<sha>`` (its compiled kernels copied from this tree when
``atss_core/csrc`` and ``setup.py`` are the same in both, built there
otherwise). Every measurement runs in child processes, one per tree, in
alternating order (baseline first in even pairs, this tree first in odd
ones), ``--pairs`` times; each child warms up, then times ``--iters``
iterations and reports their median. Printed per measurement: the median of
each tree's child medians (min-max over the pairs), and the ratio
this tree / baseline as the median of the per-pair ratios (min-max), plus
whether the outputs agree.

Measurements (both trees use only the public API):

``infer``
    ``model(images)`` in eval mode under ``torch.no_grad``: config
    ``atss_R_50_FPN_1x`` with each tree's defaults, the synthetic weights of
    ``../shared/reference`` (random weights without it), batch 1 of a random
    800 x 1216 image. Outputs: the detections, as a set (same label, IoU >
    0.99, score within 1e-3), against the baseline's.
``train``
    one SGD step (forward, backward, ``optimizer.step``) of the same model in
    training mode, 2 random images of 512 x 768 with 10 random boxes each.
    Outputs: the first step's three losses (relative difference). Also the
    child's peak resident memory (MiB).
``select``
    the loss's ``prepare_targets`` (ATSS sample selection and regression
    targets) for 16 images x ``--boxes`` random boxes on the anchors of an
    800 x 1216 input. Outputs: labels and targets, exactly equal.

OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``); on a
shared machine spinning threads make timings meaningless.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_DIR = os.path.join(os.path.dirname(ROOT), "shared", "reference")
MEASUREMENTS = ("infer", "train", "select")


# --------------------------------------------------------------------------- #
# Child: one tree, one measurement
# --------------------------------------------------------------------------- #
def _child(args):
    sys.path.insert(0, args.root)
    import torch

    torch.set_num_threads(args.threads)
    from atss_core.config import cfg as default_cfg
    from atss_core.modeling.detector import build_detection_model
    from atss_core.structures.bounding_box import BoxList
    from atss_core.structures.image_list import to_image_list
    from atss_core.utils.checkpoint import DetectronCheckpointer

    cfg = default_cfg.clone()
    cfg.merge_from_file(os.path.join(args.root, "configs", "atss", "atss_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", "", "SOLVER.BASE_LR", 0.001])
    cfg.freeze()
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    if args.weights:
        DetectronCheckpointer(cfg, model).load(args.weights)
    g = torch.Generator().manual_seed(0)

    def random_targets(n, boxes_per_image, hw):
        targets = []
        for _ in range(n):
            size = 8 + torch.rand(boxes_per_image, 2, generator=g) * (min(hw) - 8)
            xy = torch.rand(boxes_per_image, 2, generator=g) * (torch.tensor([hw[1], hw[0]]) - size)
            target = BoxList(torch.cat([xy, xy + size], dim=1), (hw[1], hw[0]))
            target.add_field("labels", torch.randint(1, 81, (boxes_per_image,), generator=g))
            targets.append(target)
        return targets

    times, outputs = [], {}
    if args.what == "infer":
        model.eval()
        images = to_image_list([torch.randn(3, 800, 1216, generator=g) * 50], 32)

        def step():
            with torch.no_grad():
                return model(images)[0]
    elif args.what == "train":
        from atss_core.solver import make_optimizer

        model.train()
        optimizer = make_optimizer(cfg, model)
        images = to_image_list([torch.randn(3, 512, 768, generator=g) * 50 for _ in range(2)], 32)
        targets = random_targets(2, 10, (512, 768))

        def step():
            losses = model(images, targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            return {k: float(v.detach()) for k, v in losses.items()}
    else:
        import inspect

        model.train()
        evaluator = model.rpn.loss_evaluator
        with torch.no_grad():
            features = model.backbone(torch.zeros(1, 3, 800, 1216))
            anchors = model.rpn.anchor_generator(features)
        grid = [tuple(f.shape[-2:]) for f in features]
        targets = random_targets(16, args.boxes, (800, 1216))
        takes_grid = "grid_sizes" in inspect.signature(evaluator.prepare_targets).parameters

        def step():
            if takes_grid:
                return evaluator.prepare_targets(targets, anchors, grid)
            return evaluator.prepare_targets(targets, anchors)

    for i in range(args.warmup + args.iters):
        start = time.perf_counter()
        out = step()
        elapsed = time.perf_counter() - start
        if i == 0:
            outputs = out
        if i >= args.warmup:
            times.append(elapsed)
    if args.what == "infer":
        outputs = {"boxes": outputs.bbox, "scores": outputs.get_field("scores"),
                   "labels": outputs.get_field("labels")}
    torch.save(outputs, args.out)
    print(json.dumps({
        "median_s": statistics.median(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


# --------------------------------------------------------------------------- #
# Parent
# --------------------------------------------------------------------------- #
def _git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def prepare_baseline(rev):
    """The worktree of ``rev`` with its compiled kernels; returns its root."""
    sha = _git("rev-parse", "--verify", rev + "^{commit}")
    tree = os.path.join(ROOT, "build", "compare", sha[:12])
    if not os.path.isdir(tree):
        os.makedirs(os.path.dirname(tree), exist_ok=True)
        _git("worktree", "add", "--detach", tree, sha)
    if any(f.startswith("_C") and f.endswith(".so") for f in os.listdir(os.path.join(tree, "atss_core"))):
        return tree, sha
    same_kernels = subprocess.run(
        ["git", "diff", "--quiet", sha, "--", "atss_core/csrc", "setup.py"], cwd=ROOT
    ).returncode == 0
    built = [f for f in os.listdir(os.path.join(ROOT, "atss_core")) if f.startswith("_C") and f.endswith(".so")]
    if same_kernels and built:
        shutil.copy2(os.path.join(ROOT, "atss_core", built[0]), os.path.join(tree, "atss_core", built[0]))
    else:
        print(f"building the kernels of {sha[:12]} in {tree} (a few minutes) ...", flush=True)
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=True,
                       stdout=subprocess.DEVNULL)
    return tree, sha


def synthetic_weights(path):
    """The reference's synthetic weights for atss_R_50_FPN_1x, or "" without ../shared."""
    keys = os.path.join(REFERENCE_DIR, "keys", "atss_R_50_FPN_1x.json")
    if not os.path.isfile(keys):
        return ""
    if not os.path.isfile(path):
        subprocess.run([sys.executable, os.path.join(REFERENCE_DIR, "reference_weights.py"), keys, path],
                       check=True, stdout=subprocess.DEVNULL)
    return path


def run_child(root, what, args, weights, out):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--root", root, "--out", out,
           "--threads", str(args.threads), "--boxes", str(args.boxes), "--weights", weights,
           "--iters", str(args.iters[what]), "--warmup", str(args.warmup[what])]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} in {root} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_outputs(what, base_path, new_path):
    import torch

    base, new = torch.load(base_path), torch.load(new_path)
    if what == "select":
        same = torch.equal(base[0], new[0]) and torch.equal(base[1], new[1])
        return "identical" if same else "DIFFERENT"
    if what == "train":
        worst = max(abs(new[k] - base[k]) / abs(base[k]) for k in base)
        return f"losses within {worst:.1e}"
    sys.path.insert(0, ROOT)
    from atss_core.structures.boxlist_ops import box_iou

    if len(base["boxes"]) == 0 and len(new["boxes"]) == 0:
        return "0 detections each"
    iou = box_iou(new["boxes"], base["boxes"])
    same = ((new["labels"][:, None] == base["labels"][None]) & (iou > 0.99)
            & ((new["scores"][:, None] - base["scores"][None]).abs() < 1e-3))
    return f"{int(same.any(1).sum())}/{len(new['boxes'])} vs {int(same.any(0).sum())}/{len(base['boxes'])} matched"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with (default HEAD)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, nargs="+", default=[50], help="boxes per image for select")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="", help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.what = args.child
        args.boxes = args.boxes[0]
        return _child(args)

    args.iters = {"infer": 3, "train": 3, "select": 5}
    args.warmup = {"infer": 1, "train": 2, "select": 1}
    base_root, sha = prepare_baseline(args.baseline)
    tmp = tempfile.mkdtemp(prefix="atss-compare-")
    weights = synthetic_weights(os.path.join(ROOT, "build", "compare", "atss_R_50_FPN_1x_synthetic.pth"))
    head = _git("rev-parse", "--short=12", "HEAD")
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"baseline {sha[:12]} vs this tree ({head}{dirty}); {cpu}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}, "
          f"load average {os.getloadavg()[0]:.1f}; weights: {'synthetic' if weights else 'random'}; "
          f"{args.pairs} alternating pairs")
    print(f"{'measurement':<16}{'baseline ms':>24}{'this tree ms':>24}{'ratio new/base':>22}  outputs / memory")
    rows = []
    for what in args.only:
        for boxes in (args.boxes if what == "select" else [None]):
            label = what if boxes is None else f"{what} {boxes}"
            base_t, new_t, ratios, base_mem, new_mem = [], [], [], [], []
            outs = {}
            for pair in range(args.pairs):
                order = [("base", base_root), ("new", ROOT)]
                if pair % 2:
                    order.reverse()
                result = {}
                for side, root in order:
                    out = os.path.join(tmp, f"{what}-{boxes}-{side}.pt")
                    result[side] = run_child(root, what, argparse.Namespace(**{**vars(args), "boxes": boxes or 50}),
                                             weights, out)
                    outs[side] = out
                base_t.append(result["base"]["median_s"])
                new_t.append(result["new"]["median_s"])
                ratios.append(result["new"]["median_s"] / result["base"]["median_s"])
                base_mem.append(result["base"]["peak_rss_mib"])
                new_mem.append(result["new"]["peak_rss_mib"])
            agreement = compare_outputs(what, outs["base"], outs["new"])
            row = {
                "measurement": label,
                "baseline_ms": [1e3 * statistics.median(base_t), 1e3 * min(base_t), 1e3 * max(base_t)],
                "new_ms": [1e3 * statistics.median(new_t), 1e3 * min(new_t), 1e3 * max(new_t)],
                "ratio": [statistics.median(ratios), min(ratios), max(ratios)],
                "outputs": agreement,
                "peak_rss_mib": [statistics.median(base_mem), statistics.median(new_mem)],
            }
            rows.append(row)

            def fmt(v, digits=0):
                return f"{v[0]:.{digits}f} ({v[1]:.{digits}f}-{v[2]:.{digits}f})"
            memory = f"; peak RSS {row['peak_rss_mib'][0]:.0f} -> {row['peak_rss_mib'][1]:.0f} MiB" \
                if what == "train" else ""
            print(f"{label:<16}{fmt(row['baseline_ms']):>24}{fmt(row['new_ms']):>24}"
                  f"{fmt(row['ratio'], 2):>22}  {agreement}{memory}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        sys.path.insert(0, ROOT)
        from atss_core.utils.io import atomic_write_json

        atomic_write_json({"baseline": sha, "head": head, "dirty": bool(dirty), "cpu": cpu,
                           "threads": args.threads, "pairs": args.pairs, "rows": rows}, args.json, indent=2)


if __name__ == "__main__":
    main()
