"""Every zoo config builds a model whose state dict has exactly the reference's
names and shapes (../shared/reference/keys), anchors included."""
import glob
import json
import os

import pytest
import torch

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
    # Offsets start at zero, so a fresh deformable layer is a regular conv.
    for n in dcn:
        offset = model.get_submodule(n).offset
        assert int(offset.weight.count_nonzero()) == 0 and int(offset.bias.count_nonzero()) == 0


def test_frozen_stages_have_no_gradient():
    cfg = load_cfg("atss_R_50_FPN_1x")
    model = build_detection_model(cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    early = {n for n, _ in model.named_parameters() if n.startswith(("backbone.body.stem.", "backbone.body.layer1."))}
    assert frozen and frozen == early
