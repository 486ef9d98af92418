"""The image pipelines give the reference's network input pixel for pixel.

The reference decodes with Pillow (``Image.open(path).convert("RGB")``), resizes
the PIL image with torchvision's ``Resize`` (Pillow's bilinear ``resize``, which
filters over the whole footprint when shrinking), flips it (training), then
``ToTensor`` (RGB / 255), BGR x 255, minus ``PIXEL_MEAN``. :func:`reference_input`
writes that chain down with Pillow and torch alone; the training, test,
test-time-augmentation and demo pipelines must equal it exactly (``torch.equal``),
upscaling and downscaling, on real COCO JPEGs and on grayscale, palette and RGBA
PNGs.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COCO128_DIR, load_cfg, requires_coco128

from atss_core.data.datasets.coco import read_image_file
from atss_core.data.transforms import build_transforms
from atss_core.data.transforms.transforms import get_size, resize_image
from atss_core.engine.bbox_aug import build_bbox_aug

VAL_DIR = os.path.join(COCO128_DIR, "val2017")
# Shorter side -> scale for a 640x480 COCO image: 2.5 and 1.67 (up), 1 (no-op),
# 0.83 (the 400-pixel TTA pass), 0.5 and 0.25 (down).
SIZES = [(1200, 2000), (800, 1333), (480, 1333), (400, 1333), (240, 400), (120, 200)]


def reference_input(path_or_pil, min_size, max_size, hflip=False, mean=(102.9801, 115.9465, 122.7717)):
    """The reference's network input [3, H, W] (float32, BGR, 0..255 minus the mean)."""
    image = path_or_pil if isinstance(path_or_pil, Image.Image) else Image.open(path_or_pil).convert("RGB")
    h, w = get_size(image.size, min_size, max_size)
    if (h, w) != (image.size[1], image.size[0]):
        image = image.resize((w, h), Image.BILINEAR)
    if hflip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)  # ToTensor
    tensor = tensor[[2, 1, 0]] * 255
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.ones(3, 1, 1)


def coco_files(count):
    if not os.path.isdir(VAL_DIR):
        pytest.skip(f"COCO subset not found at {VAL_DIR} (../shared/data/coco128 beside the repository)")
    return [os.path.join(VAL_DIR, n) for n in sorted(os.listdir(VAL_DIR))[:count]]


def test_decoding_is_pillows():
    for path in coco_files(3):
        expected = np.array(Image.open(path).convert("RGB"))[:, :, ::-1]
        assert np.array_equal(read_image_file(path), expected)


@requires_coco128()
@pytest.mark.parametrize("min_size, max_size", SIZES)
def test_test_pipeline_equals_the_reference(min_size, max_size):
    cfg = load_cfg("atss_R_50_FPN_1x", ["INPUT.MIN_SIZE_TEST", min_size, "INPUT.MAX_SIZE_TEST", max_size])
    transforms = build_transforms(cfg, is_train=False)
    for path in coco_files(4):
        ours, _ = transforms(read_image_file(path), None)
        assert torch.equal(ours, reference_input(path, min_size, max_size)), (path, min_size)


@requires_coco128()
@pytest.mark.parametrize("min_size, max_size", [(800, 1333), (400, 667)])
def test_training_pipeline_with_flip_equals_the_reference(min_size, max_size):
    cfg = load_cfg("atss_R_50_FPN_1x", ["INPUT.MIN_SIZE_TRAIN", f"({min_size},)", "INPUT.MAX_SIZE_TRAIN",
                                         max_size, "INPUT.HORIZONTAL_FLIP_PROB_TRAIN", 1.0])
    transforms = build_transforms(cfg, is_train=True)
    for path in coco_files(3):
        ours, _ = transforms(read_image_file(path), None)
        assert torch.equal(ours, reference_input(path, min_size, max_size, hflip=True)), path


@requires_coco128()
def test_test_time_augmentation_passes_equal_the_reference():
    cfg = load_cfg("atss_dcnv2_X_101_64x4d_FPN_2x", ["TEST.BBOX_AUG.ENABLED", True])
    aug = build_bbox_aug(cfg)
    path = coco_files(1)[0]
    image = read_image_file(path)
    checked = 0
    for aug_pass in aug.passes:
        if aug_pass.min_size > 900:  # the large passes take long and add nothing new
            continue
        expected = reference_input(path, aug_pass.min_size, aug_pass.max_size, hflip=aug_pass.hflip)
        assert torch.equal(aug._prepare(image, aug_pass), expected), aug_pass
        checked += 1
    assert checked >= 8


def test_demo_resizes_a_bgr_array_as_the_reference_demo():
    """The reference's demo reads with cv2 (BGR) and resizes through ToPILImage:
    Pillow's bilinear filter on the BGR channels, which is channel-order blind."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (123, 217, 3), dtype=np.uint8)
    for min_size in (60, 123, 300):
        h, w = get_size((217, 123), min_size, 1000)
        expected = np.array(Image.fromarray(bgr).resize((w, h), Image.BILINEAR)) if h != 123 else bgr
        assert np.array_equal(resize_image(bgr, min_size, 1000), expected)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "RGB"])
def test_png_modes_decode_as_pillow_converts_them(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "P" else rgb.convert("P", palette=Image.ADAPTIVE, colors=17)
    path = str(tmp_path / f"image_{mode}.png")
    image.save(path)
    decoded = read_image_file(path)
    expected = np.array(Image.open(path).convert("RGB"))[:, :, ::-1]
    assert decoded.shape == (37, 53, 3) and decoded.dtype == np.uint8
    assert np.array_equal(decoded, expected)
    if mode == "L":
        assert np.array_equal(decoded[:, :, 0], decoded[:, :, 2])
    cfg = load_cfg("atss_R_50_FPN_1x", ["INPUT.MIN_SIZE_TEST", 100, "INPUT.MAX_SIZE_TEST", 400])
    ours, _ = build_transforms(cfg, is_train=False)(decoded, None)
    assert torch.equal(ours, reference_input(path, 100, 400))


def test_exif_orientation_is_not_applied(tmp_path):
    """Pillow's open ignores the EXIF orientation, so does the reference: a JPEG
    tagged "rotate 90" keeps its stored width and height."""
    image = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = str(tmp_path / "rotated.jpg")
    image.save(path, exif=exif.tobytes())
    assert read_image_file(path).shape == (20, 40, 3)


def test_truncated_and_broken_files_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    good = tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    assert read_image_file(str(good)) is not None
    for name in ("truncated.jpg", "text.jpg", "missing.jpg"):
        assert read_image_file(str(tmp_path / name)) is None, name


@requires_coco128()
def test_data_benchmark_runs(capsys):
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("bench_data", os.path.join(REPO_ROOT, "benchmarks", "bench_data.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        rates = bench.main(["--image-dir", os.path.join(COCO128_DIR, "train2017"), "--images", "2",
                            "--repeats", "1", "--min-size", "200", "--max-size", "333"])
    finally:
        torch.set_num_threads(threads)
    assert set(rates) == {"pillow", "opencv"} and all(v[0] > 0 for v in rates.values())
    assert "images per second per worker" in capsys.readouterr().out
