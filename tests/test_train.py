"""End-to-end training with tools/train_net.py on ../shared/data/coco128.

A tiny CPU model (the ResNet-18 CPU config at a quarter of its width, a
64-channel FPN, one-conv towers, inputs of at most 128 pixels, no flips) keeps
each run to a few seconds on an idle machine. Runs in this process call
``train_net.main(argv)``; the kill/resume, multi-process and exit-status tests
start ``tools/train_net.py`` as separate processes.
"""
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from atss_core.config import cfg as default_cfg
from atss_core.engine.trainer import DivergenceError, NonFiniteLossError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
COCO128 = os.path.join(DATA_DIR, "coco128")
CONFIG = os.path.join(REPO, "configs", "atss", "cpu", "atss_R_18_FPN_coco128.yaml")

pytestmark = pytest.mark.skipif(
    not os.path.isdir(COCO128),
    reason=f"COCO subset not found at {COCO128} (../shared/data/coco128 beside the repository)",
)

# Two 640x480 train images: same input size, so one batch of both equals two
# batches of one (no padding difference).
PAIR_IDS = (144, 321)
# Few, large objects: easy to overfit.
OVERFIT_IDS = (133, 144, 321, 387)

TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.GROUP_NORM.NUM_GROUPS", "8",
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "64",
    "MODEL.ATSS.NUM_CONVS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "128",
    "INPUT.HORIZONTAL_FLIP_PROB_TRAIN", "0.0",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "2",
    "TEST.IMS_PER_BATCH", "2",
]


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_net():
    return _load_train_net()


@pytest.fixture(autouse=True)
def data_env(monkeypatch):
    monkeypatch.setenv("ATSS_DATA_DIR", DATA_DIR)
    monkeypatch.delenv("ATSS_DATASETS", raising=False)


@pytest.fixture(autouse=True)
def _restore_atss_logger(restore_atss_logger):
    """Every test here runs a tool's main(): conftest's restore_atss_logger."""


def write_subset(folder, name, image_ids, split="train2017"):
    """A COCO json of ``image_ids`` of coco128's ``split``; returns the
    ``$ATSS_DATASETS`` entry registering it as ``name``."""
    ann = os.path.join(COCO128, "annotations", f"instances_{split}.json")
    with open(ann) as f:
        data = json.load(f)
    subset = dict(data)
    subset["images"] = [im for im in data["images"] if im["id"] in image_ids]
    subset["annotations"] = [a for a in data["annotations"] if a["image_id"] in image_ids]
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump(subset, f)
    return {name: {"img_dir": os.path.join(COCO128, split), "ann_file": path}}


def register(monkeypatch, folder, entries):
    path = os.path.join(folder, "datasets.json")
    with open(path, "w") as f:
        json.dump(entries, f)
    monkeypatch.setenv("ATSS_DATASETS", path)
    return path


def argv(output_dir, *opts, skip_test=True):
    return (["--skip-test"] if skip_test else []) + [
        "--config-file", CONFIG, *TINY, "OUTPUT_DIR", str(output_dir), *opts
    ]


def metrics_rows(output_dir):
    with open(os.path.join(output_dir, "train_metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def read_last_checkpoint(output_dir):
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        return f.read().strip()


def test_default_output_dir_is_named_after_the_config(train_net):
    cfg = train_net.load_config(train_net.parse_args(["--config-file", CONFIG]))
    assert cfg.OUTPUT_DIR == os.path.join("training_dir", "atss_R_18_FPN_coco128")


def test_short_run_writes_log_config_and_checkpoints(train_net, tmp_path, capsys):
    out = tmp_path / "run"
    train_net.main(argv(out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.LOG_PERIOD", "2"))
    # The console gets a summary; the full config goes to config.yml and log.txt.
    console = capsys.readouterr().out
    assert f"Config {CONFIG}, overrides: " in console and f"Output folder {out}" in console
    assert "Running with config" not in console and "SOLVER:" not in console
    assert "Running with config" in (out / "log.txt").read_text()
    assert f"Done: the checkpoints, logs and results are in {out}" in console

    names = sorted(os.listdir(out))
    # Iteration 4, the last, is saved once: as model_final. model_0000002 is
    # known good (iterations 3 and 4 ran on its weights with sane losses);
    # .lock is the (released) run lock.
    assert names == [".lock", "config.yml", "last_checkpoint", "last_good_checkpoint", "log.txt",
                     "model_0000002.pth", "model_final.pth", "train_metrics.jsonl"]
    assert (out / "last_good_checkpoint").read_text() == "model_0000002.pth"
    assert (out / ".lock").read_text() == "", "released at the end of the run"
    log = (out / "log.txt").read_text()
    assert "iter: 2/4" in log and "iter: 4/4" in log and "Total training time" in log

    saved = default_cfg.clone()
    saved.merge_from_file(str(out / "config.yml"))
    assert saved.SOLVER.MAX_ITER == 4 and saved.OUTPUT_DIR == str(out)
    assert saved.MODEL.RESNETS.BACKBONE_OUT_CHANNELS == 64

    assert read_last_checkpoint(out) == "model_final.pth"
    final = load_checkpoint(out / "model_final.pth")
    assert final["iteration"] == 4 and final["scheduler"]["last_epoch"] == 4
    assert final["optimizer"]["state"], "momentum buffers are saved"
    assert load_checkpoint(out / "model_0000002.pth")["iteration"] == 2

    rows = metrics_rows(out)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("loss", "loss_cls", "loss_reg", "loss_centerness"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(train_net, tmp_path, monkeypatch):
    build = train_net.build_detection_model
    calls = {"n": 0}

    def nan_at_third_iteration(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 3:
            output = dict(output, loss_cls=output["loss_cls"] * float("nan"))
        return output

    def build_poisoned(cfg):
        model = build(cfg)
        model.register_forward_hook(nan_at_third_iteration)
        return model

    monkeypatch.setattr(train_net, "build_detection_model", build_poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss_cls=nan"):
        train_net.main(argv(out, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2",
                            "SOLVER.LOG_PERIOD", "4"))
    assert read_last_checkpoint(out) == "model_0000002.pth"
    assert not (out / "model_0000004.pth").exists() and not (out / "model_final.pth").exists()
    good = load_checkpoint(out / "model_0000002.pth")
    assert good["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in good["model"].values())
    assert "non-finite loss at iteration 3" in (out / "log.txt").read_text()


def test_periodic_and_final_evaluation(train_net, tmp_path, monkeypatch):
    entries = write_subset(str(tmp_path), "val4", (139, 285, 632, 724), split="val2017")
    register(monkeypatch, str(tmp_path), entries)
    out = tmp_path / "run"
    train_net.main(argv(out, "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "1", "DATASETS.TEST", "('val4',)",
                        "MODEL.ATSS.INFERENCE_TH", "0.0", skip_test=False))
    for folder in ("iter_0000001/val4", "val4"):
        metrics = json.loads((out / "inference" / folder / "metrics.json").read_text())
        assert 0.0 <= metrics["AP50"] <= 1.0
        assert isinstance(json.loads((out / "inference" / folder / "bbox.json").read_text()), list)


def _run_cli(args, env, timeout=300, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def _cli_env(extra=None):
    env = dict(os.environ, ATSS_DATA_DIR=DATA_DIR, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    env.update(extra or {})
    return env


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    """A run killed (SIGKILL) after a checkpoint and restarted continues from it
    with the saved optimizer and scheduler: its final weights are bit for bit
    those of a run that was never interrupted. All three runs are processes with
    the same settings (one thread): rounding is then the same in each, on any
    CPU. (With another thread count, or under another
    instruction set, reductions round differently and the weights drift apart
    by ~1e-5 within a few iterations; that is not a resume defect.)"""
    killed = tmp_path / "killed"
    opts = ["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.LOG_PERIOD", "1", "SOLVER.WARMUP_METHOD", "linear"]
    proc = subprocess.Popen(
        [sys.executable, "tools/train_net.py", *argv(killed, *opts, "SOLVER.MAX_ITER", "1000")],
        cwd=REPO, env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while not (killed / "last_checkpoint").exists():
            assert proc.poll() is None, "the training process ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed_from = load_checkpoint(killed / read_last_checkpoint(killed))["iteration"]
    assert resumed_from % 2 == 0 and resumed_from >= 2
    saved_optimizer = load_checkpoint(killed / read_last_checkpoint(killed))["optimizer"]
    max_iter = str(resumed_from + 2)

    _train_in_process(argv(killed, *opts, "SOLVER.MAX_ITER", max_iter))
    log = (killed / "log.txt").read_text()
    assert f"Start training at iteration {resumed_from + 1} of {max_iter}" in log
    assert f"Loading optimizer state from {killed / f'model_{resumed_from:07d}.pth'}" in log
    rows = [r for r in metrics_rows(killed) if r["iteration"] > resumed_from]
    assert [r["iteration"] for r in rows][-2:] == [resumed_from + 1, resumed_from + 2]

    uninterrupted = tmp_path / "uninterrupted"
    _train_in_process(argv(uninterrupted, *opts, "SOLVER.MAX_ITER", max_iter))
    a = load_checkpoint(killed / "model_final.pth")
    b = load_checkpoint(uninterrupted / "model_final.pth")
    assert a["iteration"] == b["iteration"] == resumed_from + 2
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    for key in b["model"]:
        _assert_bitwise_equal(a["model"][key], b["model"][key], key)
    # The momentum buffers went on from the saved ones.
    assert set(saved_optimizer["state"]) == set(b["optimizer"]["state"])
    for key, state in b["optimizer"]["state"].items():
        _assert_bitwise_equal(a["optimizer"]["state"][key]["momentum_buffer"], state["momentum_buffer"],
                              f"momentum buffer {key}")


def _train_in_process(args):
    """tools/train_net.py in a process of its own (the settings of _cli_env)."""
    result = _run_cli(["tools/train_net.py", *args], env=_cli_env())
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_bitwise_equal(actual, expected, what):
    if not torch.equal(actual, expected):
        diff = (actual - expected).abs()
        pytest.fail(f"{what}: {int((diff > 0).sum())} of {diff.numel()} values differ, by up to "
                    f"{float(diff.max()):.3g} (relative {float((diff / expected.abs().clamp(min=1e-12)).max()):.3g})")


def test_two_processes_give_the_losses_of_one(train_net, tmp_path, monkeypatch):
    """Gloo, 2 processes x 1 image == 1 process x 2 images: same first-iteration
    losses (averaged over processes) and the same updated weights."""
    entries = write_subset(str(tmp_path), "pair", PAIR_IDS)
    datasets_file = register(monkeypatch, str(tmp_path), entries)
    opts = ["DATASETS.TRAIN", "('pair',)", "DATALOADER.ASPECT_RATIO_GROUPING", "False",
            "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2"]

    single = tmp_path / "single"
    train_net.main(argv(single, *opts))

    double = tmp_path / "double"
    result = _run_cli(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tools/train_net.py",
         *argv(double, *opts)],
        env=_cli_env({"ATSS_DATASETS": datasets_file}),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in (double / "log.txt").read_text()

    one, two = metrics_rows(single)[0], metrics_rows(double)[0]
    for key in ("loss", "loss_cls", "loss_reg", "loss_centerness"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    a = load_checkpoint(single / "model_final.pth")["model"]
    b = load_checkpoint(double / "model_final.pth")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)


def test_cli_reports_a_non_finite_loss_cleanly(tmp_path):
    out = tmp_path / "run"
    result = _run_cli(["tools/train_net.py", *argv(out, "SOLVER.MAX_ITER", "3", "SOLVER.BASE_LR", "1e30",
                                                   "SOLVER.WARMUP_ITERS", "0", "SOLVER.LOG_PERIOD", "1",
                                                   "SOLVER.CHECKPOINT_PERIOD", "1")],
                      env=_cli_env())
    assert result.returncode == 2, result.stderr[-3000:]
    assert "train_net.py: error: non-finite loss at iteration 2" in result.stderr
    assert "Traceback" not in result.stderr
    # Iteration 1's step (lr 1e30) already corrupted model_0000001: no checkpoint
    # is known good, and the message says so instead of "resume".
    assert "No checkpoint of this run is known good: model_0000001.pth was saved just before" in result.stderr
    assert read_last_checkpoint(out) == "model_0000001.pth"
    assert not (out / "last_good_checkpoint").exists()


def test_exploding_weights_stop_the_run_and_a_lower_lr_resumes_from_the_last_good_checkpoint(
        train_net, tmp_path):
    """SOLVER.GAMMA 1e6 at step 3: iteration 4's step (lr 1e4) corrupts the
    weights saved as model_0000004 although every loss up to it was sane; the
    loss of iteration 5 explodes (finite, ~1e9). The run stops there and points
    last_checkpoint back at model_0000002, so that the documented advice --
    lower the learning rate and restart -- trains on with finite losses."""
    out = tmp_path / "run"
    common = ["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.LOG_PERIOD", "1", "SOLVER.WARMUP_ITERS", "0",
              "SOLVER.BASE_LR", "0.01", "SOLVER.STEPS", "(3,)", "SOLVER.MAX_ITER", "8"]
    with pytest.raises(DivergenceError) as error:
        train_net.main(argv(out, *common, "SOLVER.GAMMA", "1e6"))
    message = str(error.value)
    assert message.startswith("the loss exploded at iteration 5: ")
    assert ("model_0000004.pth was saved as the loss went bad and may hold diverged weights (it is kept): "
            "OUTPUT_DIR/last_checkpoint now names model_0000002.pth") in message
    assert "then restart: the run resumes from model_0000002.pth" in message
    assert read_last_checkpoint(out) == "model_0000002.pth"
    assert (out / "last_good_checkpoint").read_text() == "model_0000002.pth"
    assert (out / "model_0000004.pth").exists() and not (out / "model_0000006.pth").exists()
    rows = metrics_rows(out)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[4]["loss"] > 1000 * rows[0]["loss"], "iteration 5 ran on model_0000004's weights"

    # What "lower the lr and resume" did before: resume from model_0000004 (then
    # last_checkpoint). Its weights are broken; the loss history it stores
    # makes the first iteration stop at once.
    with pytest.raises(DivergenceError, match="the loss exploded at iteration 5"):
        train_net.main(argv(tmp_path / "from_4", *common, "SOLVER.GAMMA", "0.1",
                            "MODEL.WEIGHT", str(out / "model_0000004.pth")))

    # The advice as written: lower the learning rate, restart in the same folder.
    train_net.main(argv(out, *common, "SOLVER.GAMMA", "0.1"))
    log = (out / "log.txt").read_text()
    assert f"Loading checkpoint from {out / 'model_0000002.pth'}" in log
    assert "Start training at iteration 3 of 8" in log
    resumed = metrics_rows(out)[5:]
    assert [r["iteration"] for r in resumed] == [3, 4, 5, 6, 7, 8]
    assert [r["lr"] for r in resumed] == pytest.approx([0.01] + [0.001] * 5)
    for r in resumed:
        assert math.isfinite(r["loss"]) and r["loss"] < 2 * rows[0]["loss"], r
    final = load_checkpoint(out / "model_final.pth")
    assert all(torch.isfinite(v).all() for v in final["model"].values())
    assert read_last_checkpoint(out) == "model_final.pth"
    assert (out / "last_good_checkpoint").read_text() == "model_0000006.pth"


def test_second_run_in_a_folder_is_refused_and_a_killed_run_does_not_block_it(train_net, tmp_path):
    """Two trainings in one OUTPUT_DIR: the second stops at once (exit status 2)
    naming the first, and writes nothing. After kill -9 of the first, a new run
    starts, resumes, and removes the temporaries a killed save leaves."""
    out = tmp_path / "run"
    opts = ["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.LOG_PERIOD", "1"]
    first = subprocess.Popen(
        [sys.executable, "tools/train_net.py", *argv(out, *opts, "SOLVER.MAX_ITER", "1000")],
        cwd=REPO, env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    leftover = out / ".model_0000999.pth.abcdefgh.tmp"  # as a save killed mid-way leaves
    foreign = out / ".notes.txt.abcdefgh.tmp"  # not a training file: never touched
    try:
        deadline = time.time() + 240
        while not (out / "last_checkpoint").exists():
            assert first.poll() is None, "the training process ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        leftover.write_bytes(b"0" * 1000)
        foreign.write_bytes(b"0")
        second = _run_cli(["tools/train_net.py", *argv(out, *opts, "SOLVER.MAX_ITER", "2")], env=_cli_env())
        assert second.returncode == 2, second.stderr[-3000:]
        assert second.stderr.startswith(
            f"train_net.py: error: OUTPUT_DIR {out} is in use by another training run: process {first.pid}")
        assert "tools/train_net.py --skip-test --config-file" in second.stderr, "the first run's command"
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first run goes on"
        assert "SOLVER.MAX_ITER 2" not in (out / "log.txt").read_text(), "the second run logged nothing"
        assert leftover.exists(), "only a run holding the lock removes leftovers"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    resumed_from = load_checkpoint(out / read_last_checkpoint(out))["iteration"]
    train_net.main(argv(out, *opts, "SOLVER.MAX_ITER", str(resumed_from + 1)))
    log = (out / "log.txt").read_text()
    assert f"Start training at iteration {resumed_from + 1}" in log
    assert not leftover.exists() and foreign.exists()
    (line,) = [l for l in log.splitlines() if "left in" in l and "by a run killed while saving" in l]
    assert ".model_0000999.pth.abcdefgh.tmp" in line
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") and n != foreign.name]


def test_resuming_from_non_finite_weights_is_refused(train_net, tmp_path, capsys):
    out = tmp_path / "run"
    train_net.main(argv(out, "SOLVER.MAX_ITER", "1"))
    checkpoint = load_checkpoint(out / "model_final.pth")
    name = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
    checkpoint["model"][name] = torch.full_like(checkpoint["model"][name], float("nan"))
    torch.save(checkpoint, out / "model_final.pth")
    capsys.readouterr()
    assert train_net.cli(argv(out, "SOLVER.MAX_ITER", "3")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"train_net.py: error: the weights in {out / 'model_final.pth'} are not finite: "
                          f"1 of ")
    assert f"{name} (" in err and "NaN" in err


def _first_train_ids(count):
    with open(os.path.join(COCO128, "annotations", "instances_train2017.json")) as f:
        data = json.load(f)
    with_boxes = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    return tuple(im["id"] for im in data["images"] if im["id"] in with_boxes)[:count]


@pytest.mark.slow
def test_loss_goes_down_on_coco128(train_net, tmp_path, monkeypatch):
    """200 iterations (about 25 epochs) on 16 coco128 images: the mean loss
    of each third of the run is below that of the third before."""
    register(monkeypatch, str(tmp_path), write_subset(str(tmp_path), "sixteen", _first_train_ids(16)))
    out = tmp_path / "run"
    train_net.main(argv(out, "DATASETS.TRAIN", "('sixteen',)", "SOLVER.MAX_ITER", "200",
                        "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "20", "SOLVER.STEPS", "(1000,)",
                        "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.LOG_PERIOD", "50"))
    losses = [r["loss"] for r in metrics_rows(out)]
    assert len(losses) == 200
    thirds = [sum(part) / len(part) for part in (losses[:66], losses[66:133], losses[133:])]
    assert thirds[0] > thirds[1] > thirds[2], thirds
    assert thirds[2] < 0.8 * thirds[0], thirds


@pytest.mark.slow
def test_overfit_a_few_images_then_find_them(train_net, tmp_path, monkeypatch):
    """200 iterations on 4 images with 11 large objects; the COCO evaluation of
    the trained model on the same images finds them (AP50 > 0.5)."""
    register(monkeypatch, str(tmp_path), write_subset(str(tmp_path), "few", OVERFIT_IDS))
    out = tmp_path / "run"
    train_net.main(argv(
        out, "DATASETS.TRAIN", "('few',)", "DATASETS.TEST", "('few',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
        "SOLVER.MAX_ITER", "200", "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "20",
        "SOLVER.STEPS", "(170,)", "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.LOG_PERIOD", "50",
        "SOLVER.IMS_PER_BATCH", "4", "TEST.IMS_PER_BATCH", "4",
        skip_test=False,
    ))
    metrics = json.loads((out / "inference" / "few" / "metrics.json").read_text())
    assert metrics["AP50"] > 0.5, metrics


def test_training_benchmark_times_sample_selection(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_train", os.path.join(REPO, "benchmarks", "bench_train.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    results = bench.main(["--config-file", CONFIG, "--precision", "none", "--iters", "2", "--warmup", "1",
                          "--json", str(out), *TINY])
    (r,) = results
    assert r["precision"] == "none" and r["s_per_iter"] > 0
    assert r["images_per_s"] == pytest.approx(2 / r["s_per_iter"])
    assert 0 < r["sample_selection_s_per_iter"] < r["s_per_iter"]
    assert json.loads(out.read_text())["results"][0]["s_per_iter"] == r["s_per_iter"]
