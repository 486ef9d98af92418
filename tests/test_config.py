"""Config loading: reference YAMLs and overrides work; mistakes are named."""
import pytest

from conftest import config_path

from atss_core.config import ConfigError, cfg, validate_config


def fresh():
    return cfg.clone()


def test_reference_yaml_and_overrides():
    c = fresh()
    c.merge_from_file(config_path("atss_R_50_FPN_1x"))
    c.merge_from_list(["MODEL.WEIGHT", "x.pth", "TEST.IMS_PER_BATCH", "4", "MODEL.DEVICE", "cpu",
                       "INPUT.MIN_SIZE_TEST", "800", "MODEL.ATSS.TOPK", "12", "SOLVER.BASE_LR", "1",
                       "DATASETS.TEST", "('coco_2014_minival',)", "OUTPUT_DIR", "/tmp/out"])
    assert c.MODEL.WEIGHT == "x.pth" and c.TEST.IMS_PER_BATCH == 4 and c.MODEL.DEVICE == "cpu"
    assert c.MODEL.ATSS.TOPK == 12 and c.SOLVER.BASE_LR == 1.0 and isinstance(c.SOLVER.BASE_LR, float)
    assert c.DATASETS.TEST == ("coco_2014_minival",)
    assert c.MODEL.BACKBONE.CONV_BODY == "R-50-FPN-RETINANET" and c.MODEL.ATSS_ON
    assert c.MODEL.ATSS.ANCHOR_SIZES == (64, 128, 256, 512, 1024)
    validate_config(c)


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError) as err:
        fresh().merge_from_list(["MODEL.ATSS.TOPKK", "3"])
    assert "MODEL.ATSS.TOPKK" in str(err.value) and "MODEL.ATSS.TOPK" in str(err.value)
    with pytest.raises(ConfigError) as err:
        fresh().merge_from_list(["MODEL.NUM_CLASSES", "3"])
    assert "MODEL.ATSS.NUM_CLASSES" in str(err.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  ATSS:\n    POSITIVE_TYP: 'ATSS'\n")
    with pytest.raises(ConfigError) as err:
        fresh().merge_from_file(str(path))
    assert str(path) in str(err.value) and "MODEL.ATSS.POSITIVE_TYPE" in str(err.value)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"TEST.IMS_PER_BATCH.*'four'"):
        fresh().merge_from_list(["TEST.IMS_PER_BATCH", "four"])
    with pytest.raises(ConfigError, match="MODEL.ATSS"):
        fresh().merge_from_list(["MODEL.ATSS", "3"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        fresh().merge_from_list(["MODEL.DEVICE"])


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        fresh().merge_from_file(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "broken.yaml"
    bad.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        fresh().merge_from_file(str(bad))


@pytest.mark.parametrize("opts, key", [
    (["MODEL.ATSS.POSITIVE_TYPE", "iou"], "MODEL.ATSS.POSITIVE_TYPE"),
    (["MODEL.ATSS.REGRESSION_TYPE", "POINTS"], "MODEL.ATSS.REGRESSION_TYPE"),
    (["MODEL.ATSS.REGRESSION_TYPE", "POINT", "MODEL.ATSS.ASPECT_RATIOS", "(0.5, 1.0)"], "POINT"),
    (["SOLVER.WARMUP_METHOD", "cosine"], "SOLVER.WARMUP_METHOD"),
    (["SOLVER.STEPS", "(80000, 60000)"], "SOLVER.STEPS"),
    (["MODEL.DEVICE", "tpu"], "MODEL.DEVICE"),
    (["MODEL.ATSS.ANCHOR_SIZES", "(32, 64)"], "ANCHOR_SIZES"),
    (["TEST.IMS_PER_BATCH", "0"], "TEST.IMS_PER_BATCH"),
    (["INPUT.MAX_SIZE_TRAIN", "0"], "INPUT.MAX_SIZE_TRAIN"),
    (["INPUT.MAX_SIZE_TEST", "0"], "INPUT.MAX_SIZE_TEST"),
    (["TEST.BBOX_AUG.MAX_SIZE", "-1"], "TEST.BBOX_AUG.MAX_SIZE"),
    (["INPUT.MIN_SIZE_TEST", "0"], "INPUT.MIN_SIZE_TEST"),
    (["SOLVER.BASE_LR", "-0.01"], "SOLVER.BASE_LR"),
    (["SOLVER.BASE_LR", "0"], "SOLVER.BASE_LR"),
    (["SOLVER.GAMMA", "0"], "SOLVER.GAMMA"),
    (["SOLVER.MOMENTUM", "1.0"], "SOLVER.MOMENTUM"),
    (["SOLVER.WEIGHT_DECAY", "-0.0001"], "SOLVER.WEIGHT_DECAY"),
    (["SOLVER.WARMUP_FACTOR", "3.0"], "SOLVER.WARMUP_FACTOR"),
    (["MODEL.WEIGHT", "catalog://ImageNetPretrained/MSRA/R-5O"], "MODEL.WEIGHT"),
])
def test_invalid_values_are_named(opts, key):
    c = fresh()
    c.merge_from_list(opts)
    with pytest.raises(ConfigError, match=key):
        validate_config(c)


@pytest.mark.parametrize("opts, message", [
    (["INPUT.MAX_SIZE_TRAIN", "0"], "INPUT.MAX_SIZE_TRAIN caps the longer image side in pixels and must be "
                                    ">= 1, got 0; the reference uses 1333"),
    (["INPUT.MAX_SIZE_TEST", "0"], "INPUT.MAX_SIZE_TEST caps the longer image side in pixels and must be "
                                   ">= 1, got 0; the reference uses 1333"),
    (["SOLVER.BASE_LR", "-0.01"], "SOLVER.BASE_LR must be a positive learning rate, got -0.01; the "
                                  "reference uses 0.01 for a batch of 16 images"),
    (["MODEL.WEIGHT", "catalog://nope"], "MODEL.WEIGHT catalog://nope is not a known weights name; known: "
                                         "catalog://ImageNetPretrained/FAIR/20171220/X-101-32x8d, "),
])
def test_value_messages_say_what_to_do(opts, message):
    c = fresh()
    c.merge_from_list(opts)
    with pytest.raises(ConfigError) as err:
        validate_config(c)
    assert str(err.value).startswith(message)


def test_known_catalog_names_and_huge_gamma_are_valid():
    c = fresh()
    c.merge_from_list(["MODEL.WEIGHT", "catalog://ImageNetPretrained/MSRA/R-50", "SOLVER.GAMMA", "10.0",
                       "SOLVER.WARMUP_FACTOR", "0.0", "SOLVER.MOMENTUM", "0.0"])
    validate_config(c)


def test_frozen_config_refuses_merge():
    c = fresh()
    c.freeze()
    with pytest.raises(ConfigError, match="defrost"):
        c.merge_from_list(["MODEL.DEVICE", "cpu"])
