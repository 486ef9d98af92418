"""demo/atss_demo.py headless: drawn images written under their own names and
formats, unreadable files skipped; inputs and existing outputs never written
over; untrained models refused; the user's mistakes reported in one line with
exit status 2."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_cfg

from atss_core.engine.predictor import Predictor, UntrainedModelError, class_names_for
from atss_core.modeling.detector import build_detection_model
from atss_core.utils.checkpoint import DetectronCheckpointer
from demo import atss_demo

OPTS = ["MODEL.BACKBONE.CONV_BODY", "R-18-FPN-RETINANET", "MODEL.RESNETS.TRANS_FUNC", "BasicBlockWithFixedBatchNorm",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "64",
        "MODEL.ATSS.NUM_CONVS", "1", "MODEL.ATSS.NUM_CLASSES", "4", "MODEL.ATSS.INFERENCE_TH", "0.0",
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


@pytest.fixture
def checkpoint(tmp_path):
    cfg = load_cfg("atss_R_50_FPN_1x", OPTS)
    model = build_detection_model(cfg)
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.fill_(0.0)  # every class scores ~0.5: plenty of detections
    path = DetectronCheckpointer(cfg, model, save_dir=str(tmp_path)).save("model_final")
    return path


def write_images(folder):
    folder.mkdir()
    rng = np.random.RandomState(0)
    cv2.imwrite(str(folder / "a.jpg"), rng.randint(0, 255, (120, 160, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "b.png"), rng.randint(0, 255, (90, 70, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")


def test_demo_writes_drawn_images(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    write_images(images)
    out = tmp_path / "out"
    atss_demo.main(["--config-file", f"{REPO_ROOT}/configs/atss/atss_R_50_FPN_1x.yaml", "--weights", checkpoint,
                    "--images-dir", str(images), "--output-dir", str(out), "--min-image-size", "96",
                    "--confidence-threshold", "0.1", *OPTS, "MODEL.DEVICE", "cpu"])
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err
    assert "inference time" in captured.out and "processed 2 of 3 images" in captured.out
    a = cv2.imread(str(out / "a.jpg"))
    assert a.shape == (120, 160, 3)
    # each output keeps its input's name and format
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "a.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert sorted(os.listdir(out)) == ["a.jpg", "b.png"]  # no temporary files left


def test_per_class_thresholds(tmp_path, checkpoint):
    cfg = load_cfg("atss_R_50_FPN_1x", OPTS + ["INPUT.MIN_SIZE_TEST", "96"])
    names = class_names_for(cfg)
    assert names == ["class 1", "class 2", "class 3"]
    image = np.random.RandomState(1).randint(0, 255, (100, 100, 3), dtype=np.uint8)
    everything = Predictor(cfg, weights=checkpoint, score_threshold=0.0).predict(image)
    assert len(everything) > 0 and set(everything.labels.tolist()) == {1, 2, 3}
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"class 1": 0.0, "class 2": 1.0}))
    kept = Predictor(cfg, weights=checkpoint, score_threshold=1.0, class_thresholds=str(path)).predict(image)
    assert set(kept.labels.tolist()) == {1}
    assert kept.image_size == (100, 100) and float(kept.boxes[:, 2].max()) <= 100


# ------------------------------------------------------------------ outputs never overwrite inputs
CONFIG = f"{REPO_ROOT}/configs/atss/atss_R_50_FPN_1x.yaml"


def demo_args(images, out, weights, *extra, opts=()):
    args = ["--config-file", CONFIG, "--images-dir", str(images), "--min-image-size", "64", *extra]
    if out is not None:
        args += ["--output-dir", str(out)]
    if weights is not None:
        args += ["--weights", str(weights)]
    return args + OPTS + ["MODEL.DEVICE", "cpu", *opts]


def run_demo_error(capsys, args):
    """Run the demo expecting a user error: exit status 2, one message, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        atss_demo.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("atss_demo.py: error: ") or "error:" in lines[-1], err
    return err


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("spelling", ["same", "dot", "trailing-slash", "symlink", "relative"])
def test_output_dir_that_is_the_images_dir_is_refused(tmp_path, checkpoint, capsys, monkeypatch, spelling):
    images = tmp_path / "images"
    write_images(images)
    before = snapshot(images)
    out = {"same": str(images), "dot": f"{images}/.", "trailing-slash": f"{images}/",
           "symlink": str(tmp_path / "link"), "relative": "../images"}[spelling]
    if spelling == "symlink":
        os.symlink(images, tmp_path / "link")
    if spelling == "relative":
        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")
    err = run_demo_error(capsys, demo_args(images, out, checkpoint))
    assert "is the --images-dir" in err and "overwrite the originals" in err
    assert snapshot(images) == before


def test_same_stem_different_formats_get_their_own_outputs(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(3)
    cv2.imwrite(str(images / "a.jpg"), rng.randint(0, 255, (60, 80, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "a.png"), rng.randint(0, 255, (50, 40, 3), dtype=np.uint8))
    out = tmp_path / "out"
    atss_demo.main(demo_args(images, out, checkpoint))
    assert "processed 2 of 2 images" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["a.jpg", "a.png"]
    assert cv2.imread(str(out / "a.jpg")).shape == (60, 80, 3)
    assert cv2.imread(str(out / "a.png")).shape == (50, 40, 3)
    assert (out / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    write_images(images)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"my own file")
    err = run_demo_error(capsys, demo_args(images, out, checkpoint))
    assert str(out / "b.png") in err and "--overwrite" in err and "nothing was written" in err
    assert os.listdir(out) == ["b.png"] and (out / "b.png").read_bytes() == b"my own file"
    atss_demo.main(demo_args(images, out, checkpoint, "--overwrite"))
    assert cv2.imread(str(out / "b.png")).shape == (90, 70, 3)
    assert sorted(os.listdir(out)) == ["a.jpg", "b.png"]


def test_overwrite_replaces_a_link_to_an_input_not_the_input(tmp_path, checkpoint):
    images = tmp_path / "images"
    write_images(images)
    before = snapshot(images)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(images / "a.jpg", out / "a.jpg")
    os.link(images / "b.png", out / "b.png")
    atss_demo.main(demo_args(images, out, checkpoint, "--overwrite"))
    assert snapshot(images) == before
    assert not os.path.islink(out / "a.jpg") and not os.path.samefile(out / "b.png", images / "b.png")


def test_nothing_is_created_when_the_demo_stops(tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images)
    out = tmp_path / "out"
    run_demo_error(capsys, demo_args(images, out, None))  # untrained: refused
    assert not out.exists()


# ------------------------------------------------------------------ untrained models
def test_no_weights_is_refused_unless_allow_untrained(tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images)
    err = run_demo_error(capsys, demo_args(images, tmp_path / "out", None, opts=["MODEL.WEIGHT", ""]))
    assert "no weights were given" in err and "--allow-untrained" in err
    atss_demo.main(demo_args(images, tmp_path / "out", None, "--allow-untrained", opts=["MODEL.WEIGHT", ""]))
    assert "processed 2 of 3 images" in capsys.readouterr().out


def test_catalog_backbone_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATSS_WEIGHTS_DIR", str(tmp_path / "no-weights-here"))
    images = tmp_path / "images"
    write_images(images)
    # the config's MODEL.WEIGHT is catalog://ImageNetPretrained/MSRA/R-50
    err = run_demo_error(capsys, demo_args(images, tmp_path / "out", None))
    assert "catalog://ImageNetPretrained/MSRA/R-50" in err and "not a trained detector" in err
    assert "--allow-untrained" in err
    # with --allow-untrained it tries to load it (and says where the file should be)
    err = run_demo_error(capsys, demo_args(images, tmp_path / "out", None, "--allow-untrained"))
    assert "not found" in err and "R-50.pkl" in err


def torchvision_r18_state(model):
    state = {}
    for k, v in model.backbone.body.state_dict().items():
        state[k[len("stem."):] if k.startswith("stem.") else k] = v.clone()
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    return state


def test_backbone_only_weights_file_is_refused(tmp_path, capsys):
    cfg = load_cfg("atss_R_50_FPN_1x", OPTS)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_r18_state(build_detection_model(cfg)), path)
    with pytest.raises(UntrainedModelError, match="torchvision layout"):
        Predictor(cfg, weights=str(path))
    Predictor(cfg, weights=str(path), allow_untrained=True)
    images = tmp_path / "images"
    write_images(images)
    err = run_demo_error(capsys, demo_args(images, tmp_path / "out", path))
    assert "resnet18.pth holds ImageNet backbone weights" in err


# ------------------------------------------------------------------ one-line errors, exit status 2
def test_user_errors_exit_2_with_one_message(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    write_images(images)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    unknown_class = tmp_path / "unknown.json"
    unknown_class.write_text(json.dumps({"zebra": 0.5}))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    cases = [
        (demo_args(tmp_path / "missing", out, checkpoint), "is not a folder"),
        (demo_args(empty, out, checkpoint), "no images"),
        (demo_args(images, out, checkpoint, "--class-thresholds", str(bad_json)), "not valid JSON"),
        (demo_args(images, out, checkpoint, "--class-thresholds", str(unknown_class)), "'zebra'"),
        (demo_args(images, out, checkpoint, "--class-thresholds", str(tmp_path / "nope.json")), "no such file"),
        (demo_args(images, out, junk), "junk.pth"),
        (demo_args(images, out, tmp_path / "missing.pth"), "does not exist"),
        (demo_args(images, out, "catalog://Nope", "--allow-untrained"), "catalog://Nope"),
        (demo_args(images, out, None, "--allow-untrained", opts=["MODEL.WEIGHT", "catalog://Nope"]),
         "catalog://Nope"),
        (demo_args(images, out, checkpoint, opts=["MODEL.ATSS.TOPKK", "3"]), "MODEL.ATSS.TOPK"),
        (demo_args(images, out, checkpoint, opts=["--overwrite"]), "before the config KEY VALUE pairs"),
        (["--config-file", str(tmp_path / "nope.yaml"), "--images-dir", str(images)], "no such file"),
        (demo_args(images, out, checkpoint, "--confidence-threshold", "2"), "between 0 and 1"),
        (demo_args(images, out, checkpoint, "--min-image-size", "0"), "positive"),
    ]
    for args, expected in cases:
        err = run_demo_error(capsys, args)
        assert expected in err, (args, err)
    assert not out.exists()


def test_unexpected_errors_keep_their_traceback(tmp_path, checkpoint, monkeypatch):
    images = tmp_path / "images"
    write_images(images)

    def broken(self, images):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Predictor, "predict", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        atss_demo.main(demo_args(images, tmp_path / "out", checkpoint))


def test_help_documents_outputs_and_untrained(capsys):
    with pytest.raises(SystemExit) as exit_info:
        atss_demo.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--overwrite" in text and "--allow-untrained" in text and "a.jpg -> a.jpg" in text
    assert "OUTPUT_DIR/<input file name>" in text and "status 2" in text
    doc = atss_demo.__doc__
    assert "keeps the name of its input" in doc and "--overwrite" in doc and "--allow-untrained" in doc
