"""Resize rule, flip, tensor conversion and normalisation of atss_core.data.transforms."""
import numpy as np
import pytest
import torch

from atss_core.config import ConfigError, cfg as default_cfg
from atss_core.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    build_transforms,
    get_size,
    resize_image,
    train_min_sizes,
)
from atss_core.structures import BoxList


@pytest.mark.parametrize(
    "wh, min_size, max_size, expected_hw",
    [
        ((640, 426), 800, 1333, (800, 1201)),  # the reference's example
        ((426, 640), 800, 1333, (1201, 800)),  # portrait
        ((1000, 300), 800, 1333, (400, 1333)),  # long side capped: size = round(1333*300/1000)
        ((1200, 800), 800, 1333, (800, 1200)),  # shorter side already 800: unchanged
        ((500, 500), 800, 1333, (800, 800)),
        ((640, 480), 800, None, (800, 1066)),  # no cap; long side truncated
    ],
)
def test_get_size(wh, min_size, max_size, expected_hw):
    assert get_size(wh, min_size, max_size) == expected_hw


def test_resize_scales_image_and_boxes():
    image = np.zeros((426, 640, 3), np.uint8)
    boxes = BoxList(torch.tensor([[0.0, 0.0, 639.0, 425.0], [64.0, 42.6, 128.0, 85.2]]), (640, 426))
    out, target = Resize((800,), 1333)(image, boxes)
    assert out.shape == (800, 1201, 3) and out.dtype == np.uint8
    assert target.size == (1201, 800)
    sx, sy = 1201 / 640, 800 / 426
    expected = boxes.bbox * torch.tensor([sx, sy, sx, sy])
    torch.testing.assert_close(target.bbox, expected)


def test_resize_without_target_and_identity():
    image = np.random.RandomState(0).randint(0, 255, (800, 1000, 3)).astype(np.uint8)
    out, target = Resize(800, 1333)(image)
    assert target is None and out is image
    assert resize_image(image, 400, 1333).shape == (400, 500, 3)


def test_multi_scale_range():
    c = default_cfg.clone()
    c.merge_from_list(["INPUT.MIN_SIZE_RANGE_TRAIN", (640, 800)])
    assert train_min_sizes(c) == tuple(range(640, 801))
    resize = build_transforms(c, is_train=True).transforms[0]
    assert isinstance(resize, Resize) and resize.min_size == tuple(range(640, 801))
    torch.manual_seed(0)
    image = np.zeros((100, 120, 3), np.uint8)  # 800 x 960 at most: under MAX_SIZE_TRAIN
    heights = {resize(image)[0].shape[0] for _ in range(60)}
    assert len(heights) > 20 and heights <= set(range(640, 801))
    c.merge_from_list(["INPUT.MIN_SIZE_RANGE_TRAIN", (-1, -1), "INPUT.MIN_SIZE_TRAIN", (600, 700)])
    assert train_min_sizes(c) == (600, 700)


def test_bad_size_range_is_a_config_error():
    c = default_cfg.clone()
    c.merge_from_list(["INPUT.MIN_SIZE_RANGE_TRAIN", (800, 640)])
    with pytest.raises(ConfigError, match="MIN_SIZE_RANGE_TRAIN"):
        build_transforms(c, is_train=True)


def test_horizontal_flip_boxes_follow_pixels():
    w, h = 10, 6
    image = np.zeros((h, w, 3), np.uint8)
    image[2:5, 1:4] = 255  # pixels x 1..3, y 2..4: the inclusive box [1, 2, 3, 4]
    boxes = BoxList(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), (w, h))
    boxes.add_field("labels", torch.tensor([5]))
    flipped, target = RandomHorizontalFlip(1.0)(image, boxes)
    assert target.bbox.tolist() == [[6.0, 2.0, 8.0, 4.0]]  # x' = w - x - 1
    assert target.get_field("labels").tolist() == [5]
    cols = np.nonzero(flipped[3, :, 0])[0]
    assert cols.tolist() == [6, 7, 8]
    same, same_target = RandomHorizontalFlip(0.0)(image, boxes)
    assert same is image and same_target is boxes


def test_flip_probability_is_used():
    torch.manual_seed(0)
    image = np.arange(12, dtype=np.uint8).reshape(1, 4, 3)
    flips = sum(
        int(not np.array_equal(RandomHorizontalFlip(0.5)(image)[0], image)) for _ in range(400)
    )
    assert 150 < flips < 250


def test_normalize_bgr255_is_exact():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (7, 9, 3)).astype(np.uint8)
    mean = [102.9801, 115.9465, 122.7717]
    t = Compose([ToTensor(), Normalize(mean, [1.0, 1.0, 1.0], to_bgr255=True)])
    out, _ = t(image)
    expected = torch.from_numpy(image.astype(np.float32) - np.float32(mean)).permute(2, 0, 1)
    assert out.dtype == torch.float32 and out.shape == (3, 7, 9)
    assert torch.equal(out, expected)


def test_normalize_rgb01():
    rng = np.random.RandomState(1)
    image = rng.randint(0, 256, (5, 4, 3)).astype(np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out, _ = Compose([ToTensor(), Normalize(mean, std, to_bgr255=False)])(image)
    rgb = image[:, :, ::-1].astype(np.float32) / 255.0
    expected = torch.from_numpy((rgb - np.float32(mean)) / np.float32(std)).permute(2, 0, 1)
    torch.testing.assert_close(out, expected)


def test_to_tensor_rejects_non_images():
    with pytest.raises(TypeError, match="H, W, 3"):
        ToTensor()(np.zeros((4, 4), np.uint8))


def test_build_transforms_train_and_test():
    c = default_cfg.clone()
    train = build_transforms(c, is_train=True)
    kinds = [type(t).__name__ for t in train.transforms]
    assert kinds == ["Resize", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transforms[0].min_size == (800,) and train.transforms[0].max_size == 1333
    assert train.transforms[1].prob == 0.5
    test = build_transforms(c, is_train=False)
    assert [type(t).__name__ for t in test.transforms] == ["Resize", "ToTensor", "Normalize"]
    image = np.full((426, 640, 3), 200, np.uint8)
    boxes = BoxList(torch.tensor([[10.0, 10.0, 100.0, 50.0]]), (640, 426))
    out, target = test(image, boxes)
    assert out.shape == (3, 800, 1201) and target.size == (1201, 800)
    torch.testing.assert_close(out[:, 0, 0], 200 - torch.tensor(c.INPUT.PIXEL_MEAN))
