"""Every zoo config builds a model whose state dict has exactly the reference's
names and shapes (../shared/reference/keys), anchors included; and every zoo
config's effective values equal the reference's (tests/data/reference_zoo_configs.json)."""
import glob
import math
import json
import os

import pytest
import torch
import yaml

from conftest import REFERENCE_DIR, REPO_ROOT, load_cfg, requires_reference

from atss_core.layers import DFConv2d
from atss_core.modeling.detector import build_detection_model

ZOO = [
    "atss_R_50_FPN_1x",
    "atss_dcnv2_R_50_FPN_1x",
    "atss_R_101_FPN_1x",
    "atss_R_101_FPN_2x",
    "atss_dcnv2_R_101_FPN_1x",
    "atss_dcnv2_R_101_FPN_2x",
    "atss_X_101_32x8d_FPN_2x",
    "atss_dcnv2_X_101_32x8d_FPN_2x",
    "atss_X_101_64x4d_FPN_2x",
    "atss_dcnv2_X_101_64x4d_FPN_2x",
]


def test_every_zoo_config_exists():
    present = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO_ROOT, "configs", "atss", "*.yaml"))}
    assert set(ZOO) <= present


@requires_reference()
@pytest.mark.parametrize("name", ZOO)
def test_state_dict_matches_reference_keys(name):
    with open(os.path.join(REFERENCE_DIR, "keys", name + ".json")) as f:
        spec = json.load(f)
    model = build_detection_model(load_cfg(name))
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in spec["keys"]]
    state = model.state_dict()
    for key, value in spec["buffers"].items():
        assert torch.equal(state[key], torch.tensor(value, dtype=torch.float32)), key


def test_two_x_configs_train_multi_scale():
    for name in ZOO:
        cfg = load_cfg(name)
        if name.endswith("2x"):
            assert tuple(cfg.INPUT.MIN_SIZE_RANGE_TRAIN) == (640, 800)
            assert cfg.SOLVER.MAX_ITER == 180000
        else:
            assert tuple(cfg.INPUT.MIN_SIZE_RANGE_TRAIN) == (-1, -1)
            assert cfg.SOLVER.MAX_ITER == 90000


def test_dcn_layers_sit_where_the_config_says():
    cfg = load_cfg("atss_dcnv2_R_50_FPN_1x")
    model = build_detection_model(cfg)
    dcn = sorted(n for n, m in model.named_modules() if isinstance(m, DFConv2d))
    assert all(n.startswith(("backbone.body.layer2.", "backbone.body.layer3.", "backbone.body.layer4.",
                             "rpn.head.cls_tower.9", "rpn.head.bbox_tower.9")) for n in dcn)
    assert len(dcn) == 4 + 6 + 3 + 2
    # The reference's initialisation of the offset convs: kaiming-uniform (a=1) in the
    # backbone, N(0, 0.01) in the head towers (with the head's other convs); bias 0.
    for n in dcn:
        offset = model.get_submodule(n).offset
        w = offset.weight.detach()
        assert int(offset.bias.count_nonzero()) == 0, n
        if n.startswith("rpn.head."):
            assert abs(float(w.std()) - 0.01) < 0.001 and abs(float(w.mean())) < 0.001, n
        else:
            fan_in = w[0].numel()
            bound = math.sqrt(3.0 / fan_in)  # gain sqrt(2 / (1 + a^2)) = 1 for a = 1
            assert float(w.abs().max()) <= bound, n
            # U(-b, b): std b / sqrt(3), and the extremes close to the bound
            assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3), n
            assert float(w.abs().max()) > 0.99 * bound, n
    # The deformable convolutions: U(-1/sqrt(n), 1/sqrt(n)), n = in_channels * kh * kw.
    conv = model.get_submodule("rpn.head.cls_tower.9").conv
    bound = 1 / math.sqrt(conv.in_channels * 9)
    assert float(conv.weight.detach().abs().max()) <= bound and int(conv.bias.count_nonzero()) == 0


def test_frozen_stages_have_no_gradient():
    cfg = load_cfg("atss_R_50_FPN_1x")
    model = build_detection_model(cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    early = {n for n, _ in model.named_parameters() if n.startswith(("backbone.body.stem.", "backbone.body.layer1."))}
    assert frozen and frozen == early


# --------------------------------------------------------------------------- #
# Values against the reference's configs (tests/data/reference_zoo_configs.json:
# every key each reference YAML sets, and the reference's defaults, transcribed
# from the repository and commit named in its "_source" entry).
# --------------------------------------------------------------------------- #
with open(os.path.join(REPO_ROOT, "tests", "data", "reference_zoo_configs.json")) as _f:
    REFERENCE = json.load(_f)

# Reference default keys that are deliberately not in atss_core/config/defaults.py:
# atss builds only the ATSS detector, and its defaults hold the keys that the
# reference's ATSS configs and code paths use (see the docstring of defaults.py).
# These subtrees configure the reference's other detectors (RPN / Fast R-CNN /
# Mask R-CNN / keypoint heads, FCOS, RetinaNet, FBNet); no ATSS config sets them.
ABSENT_HERE = (
    "MODEL.RPN.",
    "MODEL.ROI_HEADS.",
    "MODEL.ROI_BOX_HEAD.",
    "MODEL.ROI_MASK_HEAD.",
    "MODEL.ROI_KEYPOINT_HEAD.",
    "MODEL.FCOS.",
    "MODEL.FBNET.",
    # Of MODEL.RETINANET only USE_C5 (P6 from C5 or P5) is read by the ATSS backbone.
    "MODEL.RETINANET.",
)
ABSENT_BUT_KEPT = {"MODEL.RETINANET.USE_C5"}

# Keys whose default here differs from the reference's on purpose.
DIFFERENT_DEFAULTS = {
    # "" on purpose: the tools then write to training_dir/<config name>
    # (atss_core/engine/defaults.py) instead of the current directory ".".
    "OUTPUT_DIR": "",
    # The reference's value is the path of its own paths_catalog.py; ours is the
    # path of atss_core/config/paths_catalog.py (compared as that, below).
    "PATHS_CATALOG": os.path.join(REPO_ROOT, "atss_core", "config", "paths_catalog.py"),
}

# Keys that exist only here (atss extensions); their defaults keep the
# reference's behaviour.
ONLY_HERE = {
    "INPUT.HORIZONTAL_FLIP_PROB_TRAIN": 0.5,  # the reference always flips with p = 0.5
    "SOLVER.MIXED_PRECISION": "none",         # the reference trains in fp32
    "TEST.MIXED_PRECISION": "none",           # ... and tests in fp32
    "MODEL.CHANNELS_LAST": True,              # a memory layout: the same values up to rounding
    "MODEL.WINOGRAD": True,                   # an algorithm: the same values up to rounding
    "SOLVER.LOG_PERIOD": 20,                  # the reference logs every 20 iterations
    "TEST.EVAL_PERIOD": 0,                    # the reference evaluates only at the end
}


def _flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def _plain(value):
    """Tuples and lists both as lists, so that (1, 2) from a config equals [1, 2] from JSON."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _same(ours, ref):
    """Equal values of the same kind: bools are not ints, ints are not floats, floats compare exactly."""
    ours, ref = _plain(ours), _plain(ref)
    if isinstance(ref, list):
        return isinstance(ours, list) and len(ours) == len(ref) and all(_same(o, r) for o, r in zip(ours, ref))
    return type(ours) is type(ref) and ours == ref


def _ours_merged(name):
    from atss_core.config import cfg

    c = cfg.clone()
    c.merge_from_file(os.path.join(REPO_ROOT, "configs", "atss", name + ".yaml"))
    return _flatten(c)


def test_reference_data_names_its_source_and_every_zoo_config():
    source = REFERENCE["_source"]
    assert source["repository"] == "https://github.com/sfzhang15/ATSS"
    assert len(source["commit"]) == 40
    assert sorted(k for k in REFERENCE if not k.startswith("_")) == sorted(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_has_the_reference_values(name):
    ours = _ours_merged(name)
    wrong = [f"{name}: {key}: ours {ours.get(key, '<missing>')!r}, reference {ref!r}"
             for key, ref in REFERENCE[name].items() if key not in ours or not _same(ours[key], ref)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_effective_values_match_the_reference(name):
    """Keys the reference YAML leaves alone take the reference's defaults here too."""
    ours = _ours_merged(name)
    effective = dict(REFERENCE["_reference_defaults"])
    effective.update(REFERENCE[name])
    wrong = []
    for key, ref in effective.items():
        if key.startswith(ABSENT_HERE) and key not in ABSENT_BUT_KEPT:
            assert key not in ours, f"{key} is in our defaults now: take it out of ABSENT_HERE"
            continue
        if key in DIFFERENT_DEFAULTS:
            ref = DIFFERENT_DEFAULTS[key]
        if key not in ours or not _same(ours[key], ref):
            wrong.append(f"{name}: {key}: ours {ours.get(key, '<missing>')!r}, reference {ref!r}")
    for key in sorted(set(ours) - set(effective)):
        if key not in ONLY_HERE or not _same(ours[key], ONLY_HERE[key]):
            wrong.append(f"{name}: {key}: ours {ours[key]!r}, not a reference key nor a listed extension")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_keeps_the_reference_bbox_aug_block(name):
    """Each TEST.BBOX_AUG key that the reference YAML sets is set in our YAML file itself
    (atss_dcnv2_X_101_32x8d_FPN_2x once lacked the block, so ENABLED True gave plain detections)."""
    ref = {k: v for k, v in REFERENCE[name].items() if k.startswith("TEST.BBOX_AUG.")}
    with open(os.path.join(REPO_ROOT, "configs", "atss", name + ".yaml")) as f:
        block = ((yaml.safe_load(f) or {}).get("TEST") or {}).get("BBOX_AUG") or {}
    assert sorted("TEST.BBOX_AUG." + k for k in block) == sorted(ref), name
    ours = _ours_merged(name)
    assert all(_same(ours[k], v) for k, v in ref.items()), name


def test_the_multi_scale_test_configs_are_the_two_dcnv2_resnexts():
    with_aug = sorted(n for n in ZOO if "TEST.BBOX_AUG.SCALES" in REFERENCE[n])
    assert with_aug == ["atss_dcnv2_X_101_32x8d_FPN_2x", "atss_dcnv2_X_101_64x4d_FPN_2x"]
    for name in with_aug:
        ours = _ours_merged(name)
        assert ours["TEST.BBOX_AUG.MERGE_TYPE"] == "soft-vote" and len(ours["TEST.BBOX_AUG.SCALES"]) == 12
        assert len(ours["TEST.BBOX_AUG.SCALE_RANGES"]) == len(ours["TEST.BBOX_AUG.SCALES"])
