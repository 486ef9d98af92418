"""The tests whose results depend on the CPU's instruction set, run again under
narrower ones than this machine's, so that a claim that holds only on one CPU
fails here and not on a user's machine.

PyTorch picks its vectorised kernels by ``ATEN_CPU_CAPABILITY`` (default = no
explicit vectors, avx2, avx512), oneDNN its convolution kernels by
``ONEDNN_MAX_CPU_ISA`` and MKL its code path by ``MKL_ENABLE_INSTRUCTIONS``;
each subprocess below caps all three. The normal test run covers the machine's
own capability. Which claims are exact on every CPU and which are not is in
docs/EVALUATION.md ("Exactness on different CPUs").
"""
import os
import subprocess
import sys

import pytest
import torch

from conftest import COCO128_DIR, REFERENCE_DIR, REPO_ROOT

# Results that rounding could change: the sample-selection fixture (bit for bit),
# the head outputs, detections and losses against the reference, the reference's
# training trajectory (wider tolerances past iteration 4 there: see
# tests/test_trajectory.py), resuming a killed run (bit for bit), the quick start
# reaching its AP, the compiled kernels against their pure-PyTorch versions, and
# the speed paths (folded batch norm, channels-last, the Winograd convolutions,
# the windowed nearest-anchor search) against the plain computations.
CPU_SENSITIVE_TESTS = [
    "tests/test_sample_selection.py::test_reference_assignment_of_fixture_image",
    "tests/test_sample_selection.py::test_coco128_boxes_few_images",
    "tests/test_sample_selection.py::test_window_search_equals_topk_over_the_level",
    "tests/test_fast_paths.py::test_conv_norm_folds_frozen_bn_exactly_up_to_rounding",
    "tests/test_fast_paths.py::test_training_step_fast_paths_equal_plain",
    "tests/test_winograd.py",
    "tests/test_parity.py",
    "tests/test_trajectory.py",
    "tests/test_train.py::test_killed_run_resumes_from_its_last_checkpoint",
    "tests/test_quick_start.py::test_short_training_reaches_a_clearly_non_trivial_ap",
    "tests/test_layers_focal_loss.py",
    "tests/test_layers_nms.py",
    "tests/test_loss.py",
]

CAPABILITIES = {
    # ATen capability: (its name as torch reports it, oneDNN ISA cap, MKL cap)
    "default": ("DEFAULT", "SSE41", "SSE4_2"),
    "avx2": ("AVX2", "AVX2", "AVX2"),
}
ORDER = ["DEFAULT", "AVX2", "AVX512", "AVX512_BF16", "AVX512_VNNI", "AMX"]


def _environment(capability):
    reported, onednn, mkl = CAPABILITIES[capability]
    return dict(os.environ, ATEN_CPU_CAPABILITY=capability, ONEDNN_MAX_CPU_ISA=onednn,
                MKL_ENABLE_INSTRUCTIONS=mkl, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def _native_capability():
    return torch.backends.cpu.get_cpu_capability()


@pytest.mark.slow
@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_cpu_sensitive_tests_pass_under_a_narrower_instruction_set(capability):
    reported, _, _ = CAPABILITIES[capability]
    native = _native_capability()
    if native in ORDER and ORDER.index(native) < ORDER.index(reported):
        pytest.skip(f"this CPU's capability is {native}, below {reported}")
    env = _environment(capability)
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == reported, probe.stdout + probe.stderr

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "", *CPU_SENSITIVE_TESTS],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"ATEN_CPU_CAPABILITY={capability} (native {native}): {summary}")
    assert result.returncode == 0, (
        f"under ATEN_CPU_CAPABILITY={capability}, ONEDNN_MAX_CPU_ISA={env['ONEDNN_MAX_CPU_ISA']}, "
        f"MKL_ENABLE_INSTRUCTIONS={env['MKL_ENABLE_INSTRUCTIONS']}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}")
    assert " passed" in summary, summary
    if os.path.isdir(REFERENCE_DIR) and os.path.isdir(COCO128_DIR):
        # Only the GPU tests may skip here (-rs lists the reasons).
        skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
        assert all("CUDA" in line for line in skipped), "\n".join(skipped)
