"""tools/test_net.py and engine.inference end to end on coco128 with a tiny
random-weight detector (detections come from a lowered MODEL.ATSS.INFERENCE_TH)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import COCO128_DIR, REPO_ROOT, requires_coco128

from atss_core.config import ConfigError, cfg as default_cfg
from atss_core.data import make_data_loader
from atss_core.engine.coco_eval import METRIC_NAMES
from atss_core.engine.inference import inference
from atss_core.modeling.detector import build_detection_model
from atss_core.utils.checkpoint import DetectronCheckpointer

needs_coco128 = requires_coco128()

DATA_DIR = os.path.dirname(COCO128_DIR)
CONFIG = os.path.join(REPO_ROOT, "configs", "atss", "cpu", "atss_R_18_FPN_coco128.yaml")
VAL_ANN = os.path.join(COCO128_DIR, "annotations", "instances_val2017.json")
TEST_NET = os.path.join(REPO_ROOT, "tools", "test_net.py")
# Architecture (must match the checkpoint) and a cheap test setting.
MODEL_OPTS = ["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "64", "MODEL.ATSS.NUM_CONVS", "1"]
TEST_OPTS = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
             "MODEL.ATSS.INFERENCE_TH", "0.005", "MODEL.ATSS.PRE_NMS_TOP_N", "50",
             "TEST.DETECTIONS_PER_IMG", "20", "DATALOADER.NUM_WORKERS", "0"]
SUBSET = "coco128_val_first4"
SUBSET_DEV = "coco128_val_first4_no_annotations"  # a test-dev style split


def make_cfg(*opts):
    cfg = default_cfg.clone()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(MODEL_OPTS + TEST_OPTS + list(opts))
    return cfg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight tiny detector saved through the checkpointer."""
    folder = str(tmp_path_factory.mktemp("checkpoint"))
    torch.manual_seed(0)
    model = build_detection_model(make_cfg())
    return DetectronCheckpointer(make_cfg(), model, save_dir=folder).save("model_random")


@pytest.fixture(scope="module")
def subset_catalog(tmp_path_factory):
    """$ATSS_DATASETS file registering the first 4 val images as SUBSET, and
    the same without annotations as SUBSET_DEV."""
    folder = tmp_path_factory.mktemp("subset")
    with open(VAL_ANN) as f:
        data = json.load(f)
    keep = set(sorted(img["id"] for img in data["images"])[:4])
    data["images"] = [img for img in data["images"] if img["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    ann = folder / "subset.json"
    ann.write_text(json.dumps(data))
    del data["annotations"]
    info = folder / "image_info_subset.json"
    info.write_text(json.dumps(data))
    img_dir = os.path.join(COCO128_DIR, "val2017")
    catalog = folder / "datasets.json"
    catalog.write_text(json.dumps({SUBSET: {"img_dir": img_dir, "ann_file": str(ann)},
                                   SUBSET_DEV: {"img_dir": img_dir, "ann_file": str(info)}}))
    return str(catalog), str(ann)


@pytest.fixture
def one_thread():
    """One intra-op thread, as the tool runs below get (OMP_NUM_THREADS=1): on a
    busy 2-core machine two OpenMP threads spin against other processes and
    make these small convolutions many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_tool(args, env_extra=None, launcher=()):
    env = dict(os.environ, ATSS_DATA_DIR=DATA_DIR, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    cmd = [sys.executable, *launcher, TEST_NET, "--config-file", CONFIG, *args]
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def check_bbox_json(path, coco_gt):
    with open(path) as f:
        results = json.load(f)
    assert results, "random weights with INFERENCE_TH 0.005 should give detections"
    images = coco_gt.imgs
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert r["image_id"] in images and r["category_id"] in coco_gt.cats
        x, y, w, h = r["bbox"]
        info = images[r["image_id"]]
        # Original pixels: inside the image (+1 convention, up to a pixel of rounding).
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0
        assert x + w <= info["width"] + 1 and y + h <= info["height"] + 1
        assert 0 < r["score"] <= 1
    return results


def independent_eval(ann_file, results_file):
    coco_gt = COCO(ann_file)
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results_file), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return dict(zip(METRIC_NAMES, map(float, evaluator.stats)))


@needs_coco128
def test_test_net_on_coco128_val(tmp_path, checkpoint):
    out = tmp_path / "out"
    proc = run_tool(["--per-class-ap", *MODEL_OPTS, *TEST_OPTS, "MODEL.WEIGHT", checkpoint,
                     "OUTPUT_DIR", str(out), "TEST.IMS_PER_BATCH", "8"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = out / "inference" / "coco128_val"
    assert sorted(os.listdir(folder)) == ["bbox.json", "metrics.json"]
    results = check_bbox_json(folder / "bbox.json", COCO(VAL_ANN))
    assert len({r["image_id"] for r in results}) > 100
    with open(folder / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["dataset"] == "coco128_val" and metrics["num_images"] == 128
    expected = independent_eval(VAL_ANN, str(folder / "bbox.json"))
    for name in METRIC_NAMES:
        assert metrics[name] == pytest.approx(expected[name], abs=1e-12), name
    assert len(metrics["per_class_AP"]) == 80 and "person" in metrics["per_class_AP"]
    timing = metrics["timing"]
    assert timing["num_devices"] == 1 and timing["num_timed_images"] == 128 - 3 * 8
    assert 0 < timing["model_time_per_image"] <= timing["total_time_per_image"]
    log = (out / "test_log.txt").read_text()
    assert "Testing time / im" in log and "Average Precision" in log and "person" in log


def load_into(model, checkpoint_path):
    DetectronCheckpointer(None, model).load(checkpoint_path, use_latest=False)
    return model


def run_inference(cfg, checkpoint_path, output_folder):
    model = load_into(build_detection_model(cfg), checkpoint_path)
    (loader,) = make_data_loader(cfg, is_train=False)
    return inference(model, loader, SUBSET, device="cpu", output_folder=str(output_folder),
                     bbox_aug=cfg, warmup_iters=0)


@needs_coco128
def test_bbox_aug_end_to_end(tmp_path, checkpoint, subset_catalog, monkeypatch, one_thread):
    catalog, ann_file = subset_catalog
    monkeypatch.setenv("ATSS_DATASETS", catalog)
    monkeypatch.setenv("ATSS_DATA_DIR", DATA_DIR)
    base = ["DATASETS.TEST", f"('{SUBSET}',)", "TEST.IMS_PER_BATCH", "4"]
    plain = run_inference(make_cfg(*base), checkpoint, tmp_path / "plain")
    # Test-time augmentation with the test scale alone and NMS merging: the
    # model returns raw candidates and the merge redoes its NMS and top-k, so
    # the detections are those of the plain run.
    identity = run_inference(make_cfg(*base, "TEST.BBOX_AUG.ENABLED", "True"), checkpoint,
                             tmp_path / "identity")
    plain_results = (tmp_path / "plain" / "bbox.json").read_text()
    assert json.loads(plain_results)
    assert (tmp_path / "identity" / "bbox.json").read_text() == plain_results
    assert identity["AP"] == plain["AP"]

    # A flip merged by NMS; a smaller scale (boxes up to 64 pixels) merged by soft voting.
    for merge in (["TEST.BBOX_AUG.H_FLIP", "True", "TEST.BBOX_AUG.VOTE", "False"],
                  ["TEST.BBOX_AUG.SCALES", "(64,)", "TEST.BBOX_AUG.SCALE_RANGES", "[[0, 64]]",
                   "TEST.BBOX_AUG.VOTE", "True", "TEST.BBOX_AUG.MERGE_TYPE", "soft-vote"]):
        vote = merge[-3] == "True"
        folder = tmp_path / ("vote" if vote else "nms")
        metrics = run_inference(make_cfg(*base, "TEST.BBOX_AUG.ENABLED", "True", *merge),
                                checkpoint, folder)
        results = check_bbox_json(folder / "bbox.json", COCO(ann_file))
        assert {r["image_id"] for r in results} == set(COCO(ann_file).imgs)
        per_image = max(sum(r["image_id"] == i for r in results) for i in COCO(ann_file).imgs)
        assert per_image <= (50 if vote else 20)
        assert set(METRIC_NAMES) <= set(metrics) and metrics["num_images"] == 4
        assert (folder / "bbox.json").read_text() != plain_results


@needs_coco128
def test_test_net_on_a_split_without_annotations(tmp_path, checkpoint, subset_catalog):
    catalog, _ = subset_catalog
    proc = run_tool([*MODEL_OPTS, *TEST_OPTS, "MODEL.WEIGHT", checkpoint, "OUTPUT_DIR",
                     str(tmp_path), "DATASETS.TEST", f"('{SUBSET_DEV}',)"],
                    {"ATSS_DATASETS": catalog})
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "inference" / SUBSET_DEV
    assert sorted(os.listdir(folder)) == ["bbox.json"]
    with open(folder / "bbox.json") as f:
        assert {r["image_id"] for r in json.load(f)} == {139, 285, 632, 724}
    assert "ready to upload to the COCO evaluation server" in proc.stdout


@needs_coco128
def test_test_net_two_processes_match_one(tmp_path, checkpoint, subset_catalog):
    catalog, _ = subset_catalog
    env = {"ATSS_DATASETS": catalog}
    common = [*MODEL_OPTS, *TEST_OPTS, "MODEL.WEIGHT", checkpoint, "DATASETS.TEST", f"('{SUBSET}',)"]
    # One image per batch and process, so that batches are padded alike in both runs.
    one = run_tool([*common, "OUTPUT_DIR", str(tmp_path / "one"), "TEST.IMS_PER_BATCH", "1"], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_tool([*common, "OUTPUT_DIR", str(tmp_path / "two"), "TEST.IMS_PER_BATCH", "2"], env,
                   launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    folder = os.path.join("inference", SUBSET)
    bbox_one = (tmp_path / "one" / folder / "bbox.json").read_text()
    assert json.loads(bbox_one)
    assert (tmp_path / "two" / folder / "bbox.json").read_text() == bbox_one
    with open(tmp_path / "two" / folder / "metrics.json") as f:
        metrics_two = json.load(f)
    with open(tmp_path / "one" / folder / "metrics.json") as f:
        metrics_one = json.load(f)
    assert metrics_two["timing"]["num_devices"] == 2
    for name in METRIC_NAMES:
        assert metrics_two[name] == metrics_one[name]


def load_test_net():
    spec = importlib.util.spec_from_file_location("test_net_tool", TEST_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_net_config_errors():
    tool = load_test_net()
    with pytest.raises(ConfigError, match="MODEL.WEIGHT is empty"):
        tool.load_config(tool.parse_args(["--config-file", CONFIG]))
    with pytest.raises(ConfigError, match="DATASETS.TEST is empty"):
        tool.load_config(tool.parse_args(["--config-file", CONFIG, "DATASETS.TEST", "()",
                                          "MODEL.WEIGHT", "x.pth"]))
    with pytest.raises(ConfigError, match="unknown config key TEST.NOPE"):
        tool.load_config(tool.parse_args(["--config-file", CONFIG, "TEST.NOPE", "1"]))
    args = tool.parse_args(["--config-file", CONFIG, "--local-rank", "1", "--per-class-ap",
                            "--use-last-checkpoint", "TEST.IMS_PER_BATCH", "4"])
    assert (args.local_rank, args.per_class_ap, args.use_last_checkpoint) == (1, True, True)
    cfg = tool.load_config(args)
    assert cfg.TEST.IMS_PER_BATCH == 4 and cfg.is_frozen()
    assert tool.parse_args(["--config-file", CONFIG, "--local_rank", "3"]).local_rank == 3


def test_test_net_asks_for_the_config_file(capsys):
    tool = load_test_net()
    with pytest.raises(SystemExit):
        tool.parse_args(["MODEL.DEVICE", "cpu"])
    assert "the following arguments are required: --config-file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--config-file nope.yaml: no such file"):
        tool.load_config(tool.parse_args(["--config-file", "nope.yaml", "MODEL.WEIGHT", "x.pth"]))


def test_test_net_default_output_dir_is_named_after_the_config_and_weights():
    tool = load_test_net()
    name = os.path.splitext(os.path.basename(CONFIG))[0]
    cfg = tool.load_config(tool.parse_args(["--config-file", CONFIG, "MODEL.WEIGHT", "w/ATSS_R_50.pth"]))
    assert cfg.OUTPUT_DIR == os.path.join("training_dir", name, "eval_ATSS_R_50")
    # The last checkpoint of a training run: the folder train_net.py trains in.
    cfg = tool.load_config(tool.parse_args(["--config-file", CONFIG, "--use-last-checkpoint"]))
    assert cfg.OUTPUT_DIR == os.path.join("training_dir", name)
    cfg = tool.load_config(tool.parse_args(["--config-file", CONFIG, "MODEL.WEIGHT", "x.pth",
                                            "OUTPUT_DIR", "mine"]))
    assert cfg.OUTPUT_DIR == "mine"


def test_tools_help_has_examples_defaults_and_environment():
    for script in ("tools/test_net.py", "tools/train_net.py", "demo/atss_demo.py"):
        out = subprocess.run([sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert "examples:" in text and "--config-file" in text, script
        assert "MODEL.DEVICE" in text and "cuda" in text, script
        if script != "demo/atss_demo.py":
            assert "ATSS_DATA_DIR" in text and "training_dir/<config name>" in text, script
            assert "--local_rank" in text and "torch.distributed.launch" in text, script
    assert "--use-last-checkpoint" in subprocess.run(
        [sys.executable, "tools/test_net.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.split("output:")[1]


def test_test_net_refuses_options_after_config_pairs(capsys):
    tool = load_test_net()
    with pytest.raises(SystemExit):
        tool.parse_args(["--config-file", CONFIG, "MODEL.WEIGHT", "x.pth", "--per-class-ap"])
    assert "--per-class-ap: put the --options before the config KEY VALUE pairs" in capsys.readouterr().err


@needs_coco128
def test_test_net_use_last_checkpoint_and_errors(tmp_path, checkpoint):
    # A training run's folder: --use-last-checkpoint evaluates its last checkpoint.
    run_dir = tmp_path / "run"
    shutil.copytree(os.path.dirname(checkpoint), run_dir)
    opts = [*MODEL_OPTS, *TEST_OPTS, "DATASETS.TEST", "('coco128_val',)", "TEST.IMS_PER_BATCH",
            "32", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
    proc = run_tool(["--use-last-checkpoint", *opts, "OUTPUT_DIR", str(run_dir)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Loading checkpoint from {run_dir}" in proc.stdout
    assert (run_dir / "inference" / "coco128_val" / "metrics.json").is_file()
    # No last_checkpoint there: a clear error.
    proc = run_tool(["--use-last-checkpoint", *opts, "OUTPUT_DIR", str(tmp_path / "empty")])
    assert proc.returncode == 2 and "last_checkpoint does not exist" in proc.stderr
    # Weights that do not fit the config: the checkpointer's error, not a traceback.
    proc = run_tool([*opts, "MODEL.WEIGHT", checkpoint, "MODEL.ATSS.NUM_CONVS", "2",
                     "OUTPUT_DIR", str(tmp_path / "bad")])
    assert proc.returncode == 2 and "does not fit the model" in proc.stderr
    assert "Traceback" not in proc.stderr
