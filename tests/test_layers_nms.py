"""nms / ml_nms: compiled kernels == pure-PyTorch fallback == brute-force Python."""
import warnings

import numpy as np
import pytest
import torch

from conftest import needs_cuda, needs_cuda_ext, needs_ext

from atss_core.layers import _ext
from atss_core.layers.nms import _nms_torch, ml_nms, nms

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def brute_force_nms(boxes, scores, threshold, labels=None):
    """O(N^2) greedy NMS, one box pair at a time, with numpy scalars of the boxes' dtype:
    visit by descending score (stable), suppress at IoU > threshold, return the kept
    indices in ascending order (the reference's CUDA kernel)."""
    np_dtype = np.float64 if boxes.dtype == torch.float64 else np.float32
    b = boxes.cpu().numpy().astype(np_dtype)
    n = len(b)
    order = sorted(range(n), key=lambda i: -float(scores[i]))  # sorted() is stable
    lab = labels.tolist() if labels is not None else [0] * n
    one, zero, thr = np_dtype(1), np_dtype(0), np_dtype(threshold)

    def iou(i, j):
        area_i = (b[i, 2] - b[i, 0] + one) * (b[i, 3] - b[i, 1] + one)
        area_j = (b[j, 2] - b[j, 0] + one) * (b[j, 3] - b[j, 1] + one)
        w = max(zero, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + one)
        h = max(zero, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + one)
        inter = w * h
        return inter / (area_i + area_j - inter)

    removed = [False] * n
    keep = []
    for a, i in enumerate(order):
        if removed[i]:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            if not removed[j] and lab[j] == lab[i] and iou(i, j) > thr:
                removed[j] = True
    return torch.tensor(sorted(keep), dtype=torch.int64)


def random_boxes(n, seed, dtype=torch.float32, device="cpu", score_levels=None):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 120
    boxes = torch.cat([xy, xy + wh], 1).round()  # integer corners make exact IoU ties likely
    scores = torch.rand(n, generator=g)
    if score_levels:
        scores = (scores * score_levels).floor() / score_levels  # many ties
    labels = torch.randint(0, 4, (n,), generator=g)
    return boxes.to(device, dtype), scores.to(device, dtype), labels.to(device)


def compiled(boxes, scores, threshold, labels=None):
    if labels is None:
        return _ext.ops().nms(boxes, scores, threshold)
    return _ext.ops().ml_nms(boxes, scores, labels, threshold)


@pytest.mark.parametrize("n", [1, 2, 40, 250])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("class_wise", [False, True])
def test_fallback_matches_brute_force(n, threshold, class_wise):
    boxes, scores, labels = random_boxes(n, seed=n, score_levels=20)
    labels = labels if class_wise else None
    expected = brute_force_nms(boxes, scores, threshold, labels)
    assert torch.equal(_nms_torch(boxes, scores, labels, threshold), expected)


@needs_ext
@pytest.mark.parametrize("n", [1, 2, 40, 250])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("class_wise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_cpu_matches_brute_force(n, threshold, class_wise, dtype):
    boxes, scores, labels = random_boxes(n, seed=n + 1, dtype=dtype, score_levels=20)
    labels = labels if class_wise else None
    expected = brute_force_nms(boxes, scores, threshold, labels)
    assert torch.equal(compiled(boxes, scores, threshold, labels), expected)


@needs_ext
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda_ext)])
@pytest.mark.parametrize("class_wise", [False, True])
def test_compiled_matches_fallback_many_boxes(device, class_wise):
    boxes, scores, labels = random_boxes(4000, seed=7, device=device, score_levels=1000)
    labels = labels if class_wise else None
    for threshold in (0.4, 0.6):
        got = compiled(boxes, scores, threshold, labels)
        want = _nms_torch(boxes, scores, labels, threshold)
        assert got.device == boxes.device and got.dtype == torch.int64
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_keep_input_order(device):
    boxes = torch.tensor([[0, 0, 9, 9], [50, 50, 59, 59], [0, 0, 9, 9], [100, 0, 109, 9.]], device=device)
    scores = torch.full((4,), 0.5, device=device)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 3]
    labels = torch.tensor([1, 1, 2, 1], device=device)
    assert ml_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["dispatch", "fallback"])
def test_threshold_is_strict_and_plus_one_convention(device, path):
    run = (lambda b, s, t, lab=None: _nms_torch(b, s, lab, t)) if path == "fallback" else (
        lambda b, s, t, lab=None: nms(b, s, t) if lab is None else ml_nms(b, s, lab, t))
    # area 100 and 50, intersection 50 -> IoU exactly 0.5 with the +1 convention:
    # not suppressed at 0.5 (the reference's CUDA kernel tests IoU > threshold).
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 4.]], device=device)
    scores = torch.tensor([0.9, 0.8], device=device)
    assert run(boxes, scores, 0.5).tolist() == [0, 1]
    assert run(boxes, scores, 0.49).tolist() == [0]
    # The case: area 100 and 60, intersection 60 -> IoU 0.6 exactly; same label.
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 5.]], device=device)
    labels = torch.tensor([3, 3], device=device)
    assert run(boxes, scores, 0.6, labels).tolist() == [0, 1]
    assert run(boxes, scores, 0.59, labels).tolist() == [0]
    # Touching boxes share one pixel column under the +1 convention: IoU = 10 / 190.
    touching = torch.tensor([[0, 0, 9, 9], [9, 0, 18, 9.]], device=device)
    assert run(touching, scores, 0.06).tolist() == [0, 1]
    assert run(touching, scores, 0.05).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_output_order_is_ascending_index(device):
    boxes, scores, labels = random_boxes(300, seed=3, device=device)
    for keep in (nms(boxes, scores, 0.5), ml_nms(boxes, scores, labels, 0.5)):
        assert torch.all(keep[:-1] < keep[1:])
    # A lower-scoring box with a smaller index comes first.
    boxes = torch.tensor([[0, 0, 9, 9], [50, 50, 59, 59.]], device=device)
    assert nms(boxes, torch.tensor([0.2, 0.9], device=device), 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_single(device):
    empty = torch.zeros((0, 4), device=device)
    for keep in (nms(empty, torch.zeros(0, device=device), 0.5),
                 ml_nms(empty, torch.zeros(0, device=device),
                        torch.zeros(0, dtype=torch.int64, device=device), 0.5)):
        assert keep.dtype == torch.int64 and keep.numel() == 0 and keep.device == empty.device
    one = torch.tensor([[1, 2, 3, 4.]], device=device)
    assert nms(one, torch.tensor([0.3], device=device), 0.5).tolist() == [0]


def test_other_dtypes_are_accepted():
    boxes, scores, labels = random_boxes(100, seed=5)
    boxes64, scores64 = boxes.double(), scores.double()
    assert torch.equal(nms(boxes64, scores64, 0.5), brute_force_nms(boxes64, scores64, 0.5))
    assert torch.equal(ml_nms(boxes, scores, labels.int(), 0.5), ml_nms(boxes, scores, labels, 0.5))
    # half boxes are compared in float32
    assert torch.equal(nms(boxes.half(), scores, 0.5), nms(boxes.half().float(), scores, 0.5))


def test_argument_errors_name_the_argument():
    boxes, scores, labels = random_boxes(10, seed=1)
    with pytest.raises(ValueError, match="boxes"):
        nms(boxes[:, :3], scores, 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, scores[:5], 0.5)
    with pytest.raises(TypeError, match="labels"):
        ml_nms(boxes, scores, labels.float(), 0.5)
    with pytest.raises(TypeError, match="iou_threshold"):
        nms(boxes, scores, "0.5")


def test_fallback_warns_once_when_extension_missing(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(_ext, "_WARNED", set())
    boxes, scores, _ = random_boxes(30, seed=2)
    with pytest.warns(RuntimeWarning, match="no-build-isolation"):
        first = nms(boxes, scores, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = nms(boxes, scores, 0.5)
    assert torch.equal(first, second)
    assert torch.equal(first, brute_force_nms(boxes, scores, 0.5))


@needs_cuda_ext
def test_cuda_matches_cpu():
    boxes, scores, labels = random_boxes(3000, seed=11, score_levels=500)
    for lab in (None, labels):
        cpu = compiled(boxes, scores, 0.5, lab)
        gpu = compiled(boxes.cuda(), scores.cuda(), 0.5, None if lab is None else lab.cuda())
        assert torch.equal(cpu, gpu.cpu())


@needs_ext
@pytest.mark.slow
def test_torch_compile_fullgraph():
    boxes, scores, labels = random_boxes(200, seed=12)
    fn = torch.compile(lambda b, s, l: (nms(b, s, 0.5), ml_nms(b, s, l, 0.5)), fullgraph=True,
                       backend="aot_eager")
    got = fn(boxes, scores, labels)
    assert torch.equal(got[0], nms(boxes, scores, 0.5))
    assert torch.equal(got[1], ml_nms(boxes, scores, labels, 0.5))
