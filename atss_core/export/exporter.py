"""Writing :class:`~atss_core.export.onnx_model.ExportableATSS` to a file and
running the result: ONNX (ONNX Runtime) and ``torch.export`` programs.

The optional packages (``onnx``, ``onnxruntime``) are imported only here and
only when used: ``pip install -e .[export]`` installs them.
"""
import contextlib
import warnings

import numpy as np
import torch

from atss_core.data.transforms.transforms import get_size, resize_image
from atss_core.layers import _ext
from atss_core.structures.boxlist_ops import box_iou

from .onnx_model import (
    DCN_MIN_OPSET,
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    ExportableATSS,
    ExportError,
    has_deformable_conv,
)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "compare_detections",
    "example_image",
    "export_onnx",
    "export_torch",
    "onnx_session",
    "resolve_opset",
    "run_onnx",
]

INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")
INSTALL_HINT = "pip install onnx onnxruntime  (or: pip install --no-build-isolation -e \".[export]\")"


def _require(module):
    try:
        return __import__(module)
    except ImportError as e:
        raise ExportError(f"{module} is not installed ({e}); {INSTALL_HINT}") from None


@contextlib.contextmanager
def _quiet_tracing():
    """The tracer's warnings are about Python values of the eager NMS and
    sizes, which the exported graph computes itself (dynamic H and W are
    checked by running it at other sizes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*torch.tensor results are registered as constants.*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        yield


def example_image(cfg, height=None, width=None, image=None, seed=0):
    """The uint8 [1, H, W, 3] BGR example the graph is traced with: ``image``
    (a BGR uint8 array) resized by the reference rule, else a random image of
    ``height`` x ``width`` (default: the size the test rule gives a 640x480
    image)."""
    if image is not None:
        resized = resize_image(image, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        return torch.from_numpy(np.ascontiguousarray(resized))[None]
    if height is None or width is None:
        h, w = get_size((640, 480), cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        height, width = height or h, width or w
    if height < 1 or width < 1:
        raise ExportError(f"--height and --width must be positive, got {height}x{width}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8, generator=generator)


def resolve_opset(model, opset=None):
    """The opset to write: ``opset`` checked, or the default (17; 19 for
    models with deformable convolutions, ONNX ``DeformConv``)."""
    dcn = has_deformable_conv(model)
    if opset is None:
        return DCN_MIN_OPSET if dcn else DEFAULT_OPSET
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset}: this exporter writes opsets {MIN_OPSET}..{MAX_OPSET}")
    if dcn and opset < DCN_MIN_OPSET:
        raise ExportError(
            f"--opset {opset}: this model has deformable convolutions (DCNv2), exported as the ONNX "
            f"DeformConv operator, which needs opset >= {DCN_MIN_OPSET}; pass --opset {DCN_MIN_OPSET} "
            "or leave --opset out"
        )
    return opset


def export_onnx(model, cfg, path, example, opset=None):
    """Write the whole detector (``model``, built from ``cfg`` and loaded) as
    one ONNX graph to ``path``; returns the opset written. Input ``image`` uint8
    [1, H, W, 3] (H, W dynamic), outputs ``boxes`` [K, 4], ``scores`` [K],
    ``labels`` [K]."""
    opset = resolve_opset(model, opset)
    wrapper = ExportableATSS(model.cpu().eval(), cfg).eval()
    dynamic = {INPUT_NAME: {1: "height", 2: "width"}}
    dynamic.update({name: {0: "detections"} for name in OUTPUT_NAMES})
    with _quiet_tracing(), torch.no_grad():
        try:
            torch.onnx.export(
                wrapper, (example,), path, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        except TypeError as e:  # a PyTorch whose export() lost the TorchScript path
            raise ExportError(
                f"torch.onnx.export(dynamo=False) failed ({e}): this export uses the TorchScript-based "
                f"exporter of PyTorch 2.x (tested with 2.13, torch {torch.__version__} here)"
            ) from e
    onnx = _require("onnx")
    onnx.checker.check_model(path)
    return opset


def onnx_session(path, threads=None):
    """An ONNX Runtime CPU session of ``path`` (``threads``: intra-op threads, default ORT's)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        if "DeformConv" in str(e):
            raise ExportError(
                f"onnxruntime {ort.__version__} has no DeformConv kernel, which this model's "
                "deformable convolutions (DCNv2) are exported as; the CPU kernel came with the "
                "onnxruntime releases of 2026 (tested with 1.32): pip install -U onnxruntime"
            ) from e
        raise


def run_onnx(session, image):
    """``image`` uint8 [1, H, W, 3] (array or tensor) -> dict of numpy outputs."""
    if isinstance(image, torch.Tensor):
        image = image.numpy()
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})))


def compare_detections(boxes, scores, labels, ref_boxes, ref_scores, ref_labels,
                       iou=0.99, score_tol=1e-3):
    """Fractions of detections matched, as sets: (of the first, of the second),
    a match being the same label, IoU > ``iou`` and |score difference| <
    ``score_tol``. Both 1.0 when both are empty."""
    boxes, scores, labels, ref_boxes, ref_scores, ref_labels = (
        torch.as_tensor(np.asarray(v)) for v in (boxes, scores, labels, ref_boxes, ref_scores, ref_labels)
    )
    if len(boxes) == 0 or len(ref_boxes) == 0:
        same = float(len(boxes) == len(ref_boxes))
        return same, same
    match = (
        (labels.reshape(-1, 1).long() == ref_labels.reshape(1, -1).long())
        & (box_iou(boxes.reshape(-1, 4).float(), ref_boxes.reshape(-1, 4).float()) > iou)
        & ((scores.reshape(-1, 1).float() - ref_scores.reshape(1, -1).float()).abs() < score_tol)
    )
    return float(match.any(1).float().mean()), float(match.any(0).float().mean())


def export_torch(model, cfg, path, example):
    """Write the whole detector as a ``torch.export`` program (``torch.export.save``,
    .pt2) with dynamic H and W; returns the ExportedProgram. Loading it needs
    ``import atss_core`` first (its NMS and deformable convolution are the
    compiled ``atss::`` operators)."""
    if not _ext.is_loaded():
        raise ExportError(
            "--format torch_export needs the compiled kernels atss_core._C (the program calls "
            f"atss::ml_nms): {_ext.LOAD_ERROR}; pip install --no-build-isolation -e ."
        )
    wrapper = ExportableATSS(model.cpu().eval(), cfg).eval()
    # A feature map of one pixel would broadcast differently: the padded input
    # must exceed the largest stride (129..8192 pixels for strides 8..128).
    smallest = max(cfg.MODEL.ATSS.ANCHOR_STRIDES) + 1
    if min(example.shape[1:3]) < smallest:
        raise ExportError(f"the example image must be at least {smallest} pixels high and wide")
    dim = torch.export.Dim
    shapes = {"image": {1: dim("height", min=smallest, max=8192), 2: dim("width", min=smallest, max=8192)}}
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,), dynamic_shapes=shapes)
    torch.export.save(program, path)
    return program
