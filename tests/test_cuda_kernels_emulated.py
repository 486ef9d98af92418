"""The CUDA kernels of atss_core/csrc/cuda, run on the CPU by a SIMT emulator.

Machines without a GPU (CI among them) cannot run the CUDA kernels. Here their
sources, unchanged except for the launch syntax, are compiled for the CPU with
tests/cuda_emulator/simt.h (blocks in turn, threads as fibers with real
``__syncthreads`` semantics, CUDA's launch limits enforced) and compared with the CPU
kernels on CPU tensors: the same indexing, grid-stride loops, shared-memory paths,
launch configurations and half / bfloat16 handling that run on a GPU. What this
cannot check (device rounding, speed, races between blocks) needs a GPU:
``tests/test_layers_*.py`` run the real CUDA kernels there.

Uninitialised memory is filled with NaN / max-int while these tests run
(``torch.use_deterministic_algorithms``), so an output element a kernel forgets to
write shows up as a mismatch. The whole file runs once more under AddressSanitizer and
UndefinedBehaviorSanitizer (out-of-bounds accesses, undefined arithmetic).
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

pytestmark = [
    pytest.mark.slow,  # compiles a C++ module (about 30 s on 2 cores)
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the emulator uses Linux ucontext fibers"),
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"),
]

EMULATOR_DIR = os.path.join(REPO_ROOT, "tests", "cuda_emulator")
# A 4-word (256-box) shared-memory budget for the NMS gather kernel, so that inputs of a
# few hundred boxes reach the global-memory path that real inputs take above 393,216 boxes.
NMS_SHARED_WORDS = 4
OVERRIDES = {
    "nms_cuda.cu": {
        r"kMaxSharedWords = 48 \* 1024 / sizeof\(unsigned long long\)": f"kMaxSharedWords = {NMS_SHARED_WORDS}",
    }
}
MULTIPROCESSORS = 2  # so that the grid-stride loops wrap on small inputs


@pytest.fixture(scope="module")
def emulated_module():
    sys.path.insert(0, EMULATOR_DIR)
    try:
        import build
    finally:
        sys.path.remove(EMULATOR_DIR)
    sanitize = os.environ.get("ATSS_EMULATOR_SANITIZE") or None
    folder = "cuda_emulator" + ("_" + sanitize.replace(",", "_") if sanitize else "")
    module = build.build(os.path.join(REPO_ROOT, "build", folder), overrides=OVERRIDES, sanitize=sanitize)
    module.set_multiprocessor_count(MULTIPROCESSORS)
    return module


@pytest.fixture
def emu(emulated_module):
    """The emulated-kernel module, with an empty launch log."""
    emulated_module.take_launch_log()
    return emulated_module


@pytest.fixture(autouse=True)
def nan_filled_empty_tensors():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


# ---------------------------------------------------------------------- sanitizers


def _gcc_runtime(name):
    """Path of a GCC sanitizer runtime, or None."""
    compiler = shutil.which("gcc")
    if compiler is None:
        return None
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(bool(os.environ.get("ATSS_EMULATOR_SANITIZE")), reason="already running under the sanitizers")
def test_kernels_under_address_and_undefined_behaviour_sanitizers():
    """Every test of this file again, with the kernels built with -fsanitize=address,undefined:
    an out-of-bounds read or write of a kernel (say, a missing bounds check in a block) or
    undefined arithmetic stops the run with the sanitizer's report."""
    runtimes = [_gcc_runtime("libasan.so"), _gcc_runtime("libubsan.so")]
    if None in runtimes:
        pytest.skip("GCC's AddressSanitizer / UndefinedBehaviorSanitizer runtimes are not installed")
    env = dict(os.environ, ATSS_EMULATOR_SANITIZE="address,undefined", LD_PRELOAD=":".join(runtimes),
               ASAN_OPTIONS="detect_leaks=0")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


# ---------------------------------------------------------------------- the emulator itself


def test_emulator_barrier_and_shared_memory(emu):
    values = torch.arange(4 * 256, dtype=torch.int32)
    torch.testing.assert_close(emu.block_sums(values, 256), values.view(4, 256).sum(1, dtype=torch.int32))
    (launch,) = emu.take_launch_log()
    assert launch["grid"] == (4, 1, 1) and launch["barriers"] == 4 * (1 + 8)


def test_emulator_reports_divergent_barriers(emu):
    with pytest.raises(RuntimeError, match="divergent __syncthreads"):
        emu.launch_divergent_barrier()


@pytest.mark.parametrize("grid, block, shared, why", [
    ((1, 1, 1), (1025, 1, 1), 0, "threads per block"),
    ((1, 1, 1), (1, 1, 65), 0, "blockDim.z"),
    ((0, 1, 1), (32, 1, 1), 0, "empty grid"),
    ((1, 65536, 1), (32, 1, 1), 0, "grid too large"),
    ((1, 1, 1), (32, 1, 1), 48 * 1024 + 1, "48 KiB"),
])
def test_emulator_enforces_launch_limits(emu, grid, block, shared, why):
    with pytest.raises(RuntimeError, match="invalid configuration argument.*" + why):
        emu.launch_noop(list(grid), list(block), shared)
    # the limits themselves are fine
    emu.launch_noop([1, 65535, 1], [1, 1, 1], 0)
    emu.launch_noop([1, 1, 1], [1024, 1, 1], 48 * 1024)


# ---------------------------------------------------------------------- NMS


def random_boxes(n, seed, dtype=torch.float32, labels=5):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 400
    wh = torch.rand(n, 2, generator=g) * 120 + 2
    boxes = torch.cat([xy, xy + wh], 1).to(dtype)
    scores = torch.rand(n, generator=g).to(dtype)
    return boxes, scores, torch.randint(0, labels, (n,), generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 200, 257, 700, 2100])
def test_nms_matches_cpu(emu, n, dtype):
    boxes, scores, labels = random_boxes(n, seed=n, dtype=dtype)
    for threshold in (0.3, 0.6):
        assert torch.equal(emu.cuda_nms(boxes, scores, None, threshold), emu.cpu_nms(boxes, scores, None, threshold))
        assert torch.equal(
            emu.cuda_nms(boxes, scores, labels, threshold), emu.cpu_nms(boxes, scores, labels, threshold)
        )


def test_nms_ties_duplicates_and_threshold_equality(emu):
    """Equal scores keep input order; identical boxes; IoU exactly at the threshold suppresses."""
    base = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.0], [50.0, 50, 60, 60]])
    boxes = base.repeat(40, 1) + torch.arange(40).repeat_interleave(4)[:, None].float() * 100
    scores = torch.full((160,), 0.5)
    scores[::7] = 0.9
    labels = torch.arange(160) % 2
    # box 2 overlaps box 0 with IoU exactly 0.5 (area 50 of 100, +1 convention)
    for lab in (None, labels):
        for threshold in (0.5, 0.5000001, 1.0):
            got = emu.cuda_nms(boxes, scores, lab, threshold)
            assert torch.equal(got, emu.cpu_nms(boxes, scores, lab, threshold))


def test_nms_launches_both_gather_paths(emu):
    """Small inputs keep the removed-bitset in shared memory, large ones in global memory."""
    boxes, scores, _ = random_boxes(64 * NMS_SHARED_WORDS, seed=1)
    emu.cuda_nms(boxes, scores, None, 0.5)
    mask_launch, gather_launch = emu.take_launch_log()
    assert mask_launch["grid"] == (NMS_SHARED_WORDS, NMS_SHARED_WORDS, 1) and mask_launch["block"] == (64, 1, 1)
    assert gather_launch["grid"] == (1, 1, 1) and gather_launch["shared_bytes"] == 8 * NMS_SHARED_WORDS

    boxes, scores, _ = random_boxes(2100, seed=2)
    emu.cuda_nms(boxes, scores, None, 0.5)
    _, gather_launch = emu.take_launch_log()
    assert gather_launch["shared_bytes"] == 0
    # 33 words over 64 threads; the words each thread owns are rewritten block after block
    assert gather_launch["block"] == (64, 1, 1) and gather_launch["barriers"] == 33 + 1


# ---------------------------------------------------------------------- focal loss


def focal_inputs(n, classes, seed, scale=6.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64) * scale
    logits[0, :4] = torch.tensor([1e4, -1e4, 80.0, -80.0], dtype=torch.float64)
    targets = torch.randint(-1, classes + 1, (n,), generator=g)
    targets[0] = 1
    grad = torch.rand(n, classes, generator=g, dtype=torch.float64)
    return logits, targets, grad


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (1.5, 0.5), (0.0, 0.25)])
def test_focal_loss_matches_cpu_float64(emu, gamma, alpha):
    logits, targets, grad = focal_inputs(3001, 80, seed=0)
    loss = emu.cuda_focal_loss_forward(logits, targets, gamma, alpha)
    torch.testing.assert_close(loss, emu.cpu_focal_loss_forward(logits, targets, gamma, alpha), rtol=1e-12, atol=0)
    dx = emu.cuda_focal_loss_backward(logits, targets, grad, gamma, alpha)
    torch.testing.assert_close(dx, emu.cpu_focal_loss_backward(logits, targets, grad, gamma, alpha), rtol=1e-12, atol=0)
    assert torch.isfinite(loss).all() and torch.isfinite(dx).all()
    assert (loss[targets < 0] == 0).all() and (dx[targets < 0] == 0).all()
    forward, backward = emu.take_launch_log()
    threads = forward["grid"][0] * forward["block"][0]
    assert forward["grid"][0] == 8 * MULTIPROCESSORS and threads < logits.numel(), "grid-stride loop not exercised"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_focal_loss_reduced_precision_is_float_math_rounded_once(emu, dtype):
    """float32 / fp16 / bf16: computed in float32, rounded to the dtype once."""
    logits64, targets, grad64 = focal_inputs(1000, 80, seed=1)
    logits, grad = logits64.to(dtype), grad64.to(dtype)
    exact = emu.cpu_focal_loss_forward(logits.double(), targets, 2.0, 0.25)
    exact_dx = emu.cpu_focal_loss_backward(logits.double(), targets, grad.double(), 2.0, 0.25)
    loss = emu.cuda_focal_loss_forward(logits, targets, 2.0, 0.25)
    dx = emu.cuda_focal_loss_backward(logits, targets, grad, 2.0, 0.25)
    assert loss.dtype == dtype and dx.dtype == dtype
    info = torch.finfo(dtype)
    # one rounding to the output dtype (half an ulp, or half the smallest subnormal)
    # plus float32 arithmetic error
    for got, want in ((loss, exact), (dx, exact_dx)):
        err = (got.double() - want).abs()
        bad = err > want.abs() * (info.eps / 2 + 1e-5) + info.tiny * info.eps / 2 + 1e-30
        assert not bad.any(), f"{int(bad.sum())} elements off, e.g. {got[bad][:3]} vs {want[bad][:3]}"


# ---------------------------------------------------------------------- deformable convolution

# (batch, channels, H, W, (kh, kw), stride, padding, dilation, deformable_groups)
DCN_GEOMETRIES = [
    (2, 4, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (3, 6, 10, 8, (3, 2), (2, 1), (1, 0), (2, 1), 3),
    (1, 8, 5, 6, (1, 1), (1, 1), (0, 0), (1, 1), 2),
    (2, 2, 12, 11, (3, 3), (2, 2), (2, 2), (2, 2), 1),
]


def dcn_inputs(geometry, seed, dtype=torch.float64):
    b, c, h, w, (kh, kw), s, p, d, dg = geometry
    ho = (h + 2 * p[0] - (d[0] * (kh - 1) + 1)) // s[0] + 1
    wo = (w + 2 * p[1] - (d[1] * (kw - 1) + 1)) // s[1] + 1
    geo = [c, h, w, ho, wo, kh, kw, s[0], s[1], p[0], p[1], d[0], d[1], dg]
    g = torch.Generator().manual_seed(seed)
    k, L = kh * kw, ho * wo
    input = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    offset = torch.randn(b, 2 * dg * k, ho, wo, generator=g, dtype=torch.float64) * 3
    offset[:, :, ::2] = offset[:, :, ::2].round()  # integer positions: one-sided gradients
    offset[:, 0::5] += 2 * max(h, w)  # far outside the image
    mask = torch.rand(b, dg * k, ho, wo, generator=g, dtype=torch.float64)
    grad_columns = torch.randn(c * k, b * L, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (input, offset, mask, grad_columns)], geo


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def run_primitives(emu, device, tensors, geo, batch):
    """im2col columns, col2im grad_input, col2im_coord (grad_offset, grad_mask)."""
    input, offset, mask, grad_columns = tensors
    c, k, L = geo[0], geo[5] * geo[6], geo[3] * geo[4]
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    columns = nan_like((c * k, batch * L), input.dtype)
    getattr(emu, f"{device}_deform_im2col")(input, offset, mask, geo, batch, columns)
    grad_input = torch.zeros(input.shape, dtype=acc)
    getattr(emu, f"{device}_deform_col2im")(grad_columns, offset, mask, geo, batch, grad_input)
    grad_offset, grad_mask = nan_like(offset.shape, input.dtype), nan_like(mask.shape, input.dtype)
    getattr(emu, f"{device}_deform_col2im_coord")(grad_columns, input, offset, mask, geo, batch, grad_offset, grad_mask)
    return columns, grad_input, grad_offset, grad_mask


@pytest.mark.parametrize("geometry", DCN_GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deform_conv_primitives_match_cpu(emu, geometry, dtype):
    tensors, geo = dcn_inputs(geometry, seed=3, dtype=dtype)
    batch = geometry[0]
    got = run_primitives(emu, "cuda", tensors, geo, batch)
    want = run_primitives(emu, "cpu", tensors, geo, batch)
    # col2im sums over taps in a different order on the two devices (atomics vs plans)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("columns", "grad_input", "grad_offset", "grad_mask"), got, want):
        assert not a.isnan().any(), f"{name}: elements left unwritten"
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    for launch in emu.take_launch_log():
        assert launch["block"] == (256, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_deform_conv_primitives_reduced_precision(emu, dtype):
    """fp16 / bf16 are sampled and accumulated in float32: equal to the float32 kernel on the
    same (rounded) inputs up to the final rounding to the dtype."""
    tensors, geo = dcn_inputs(DCN_GEOMETRIES[1], seed=4, dtype=dtype)
    batch = DCN_GEOMETRIES[1][0]
    columns, grad_input, grad_offset, grad_mask = run_primitives(emu, "cuda", tensors, geo, batch)
    assert grad_input.dtype == torch.float32  # the accumulator the driver rounds at the end
    ref = run_primitives(emu, "cpu", [t.float() for t in tensors], geo, batch)
    eps = torch.finfo(dtype).eps
    for name, got, want in zip(("columns", "grad_input", "grad_offset", "grad_mask"),
                               (columns, grad_input, grad_offset, grad_mask), ref):
        err = (got.float() - want).abs()
        assert (err <= want.abs() * (eps / 2 + 1e-5) + 1e-5).all(), f"{name}: max error {err.max()}"
