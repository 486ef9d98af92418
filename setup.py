"""Build and install atss_core with its compiled kernels ``atss_core._C``.

Install into an environment that already has PyTorch, without build isolation
(so pip never fetches another torch)::

    pip install --no-build-isolation -e .
    # or, to build the kernels in place only:
    python setup.py build_ext --inplace

Environment variables:

- ``FORCE_CUDA=1``: compile the CUDA kernels even when no GPU is visible
  (needs a CUDA build of PyTorch and the CUDA toolkit, ``CUDA_HOME``).
- ``TORCH_CUDA_ARCH_LIST``: GPU architectures to compile for, e.g. ``"8.0;9.0"``;
  the default is the list the installed PyTorch was built for.
- ``ATSS_NO_EXT=1``: install without compiling; the layers then run their
  pure-PyTorch implementations.

See docs/KERNELS.md.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "atss_core needs PyTorch at build time: install torch first, then run "
        "`pip install --no-build-isolation -e .` (build isolation would hide the installed torch)."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("atss_core", "csrc")
FALLBACK_NOTE = (
    "atss_core works without its compiled kernels: the layers fall back to their pure-PyTorch "
    "implementations (same results, slower). To install without compiling, set ATSS_NO_EXT=1."
)


def _cuda_wanted():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _default_arch_list():
    """Architectures of the installed PyTorch build, in TORCH_CUDA_ARCH_LIST form."""
    try:
        flags = torch._C._cuda_getArchFlags().split()
    except (AttributeError, RuntimeError):
        flags = []
    archs = [f[3:] for f in flags if f.startswith("sm_")]
    archs = [f"{a[:-1]}.{a[-1]}" for a in archs if a.isdigit() and len(a) >= 2]
    if not archs:
        archs = ["7.5", "8.0", "8.6", "8.9", "9.0"]
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def _pip_cuda_header_dirs():
    """Header folders of the ``nvidia-*`` pip packages that CUDA builds of PyTorch
    install (cuBLAS, cuSPARSE, cuSOLVER, ...). PyTorch's CUDA headers include some of
    these, which a CUDA toolkit installed without those libraries lacks (e.g. only
    nvcc and the runtime). They are searched with ``-idirafter``, i.e. after the
    toolkit's own folders, so a complete toolkit's headers always win."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "include")))


def _extensions():
    if os.environ.get("ATSS_NO_EXT", "0") == "1":
        print("ATSS_NO_EXT=1: not compiling atss_core._C. " + FALLBACK_NOTE)
        return []
    sources = [os.path.join(CSRC, "vision.cpp"), os.path.join(CSRC, "deform_conv.cpp")]
    sources += sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cxx_flags = ["-O3"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is OpenMP inside the headers: without it the CPU kernels run serially.
        # -fno-trapping-math (no floating-point exception flags are read) lets GCC
        # vectorise the clamped float-to-int steps of the focal loss's exp.
        cxx_flags += ["-fopenmp", "-fno-trapping-math"]
        link_flags.append("-fopenmp")
    elif sys.platform == "win32":
        cxx_flags = ["/O2", "/openmp"]
    define_macros = []
    extension = CppExtension
    extra_compile_args = {"cxx": cxx_flags}
    if _cuda_wanted():
        if CUDA_HOME is None:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME. " + FALLBACK_NOTE)
        if torch.version.cuda is None:
            sys.exit("FORCE_CUDA=1 needs a CUDA build of PyTorch; this one is CPU-only. " + FALLBACK_NOTE)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _default_arch_list())
        extension = CUDAExtension
        sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        for header_dir in _pip_cuda_header_dirs():
            extra_compile_args["cxx"] += ["-idirafter", header_dir]
            extra_compile_args["nvcc"] += ["-Xcompiler", f"-idirafter{header_dir}"]
        print(f"atss_core._C: compiling CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST="
              f"{os.environ['TORCH_CUDA_ARCH_LIST']}")
    else:
        print("atss_core._C: compiling CPU kernels only (no CUDA GPU/toolkit; FORCE_CUDA=1 forces CUDA)")
    return [
        extension(
            "atss_core._C",
            sources,
            include_dirs=[os.path.join(ROOT, CSRC)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=link_flags,
        )
    ]


class BuildExtensionWithHint(BuildExtension):
    """BuildExtension that says which sources failed and that the fallback exists."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            failed = "\n  ".join(self._uncompiled_sources(ext)) or "(none: the link step failed)"
            print(
                f"\nerror: compiling {ext.name} failed: {exc}\n"
                "The compiler output above names the failing source file and line "
                "(with ninja: the 'FAILED:' line, then the 'error:' lines).\n"
                f"Sources of {ext.name} without an up-to-date object file:\n  {failed}\n"
                f"{FALLBACK_NOTE}\n",
                file=sys.stderr,
            )
            raise

    def _uncompiled_sources(self, ext):
        objects = self.compiler.object_filenames(ext.sources, output_dir=self.build_temp)
        return [
            src for src, obj in zip(ext.sources, objects)
            if not os.path.exists(obj) or os.path.getmtime(obj) < os.path.getmtime(src)
        ]


setup(
    name="atss_core",
    version="0.1.0",
    description="ATSS object detection (Zhang et al., CVPR 2020) in PyTorch",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "configs.*")),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.4",
        "yacs>=0.1.8",
        "pycocotools>=2.0.2",
        "numpy>=1.21",
        "opencv-python-headless>=4.5",
        "tqdm>=4.60",
    ],
    extras_require={
        "build": ["ninja>=1.10"],
        "test": ["pytest>=7"],
        # tools/export_model.py and tests/test_export.py (docs/DEPLOY.md); DCNv2 models need an
        # onnxruntime with the DeformConv CPU kernel (tested: onnx 1.23.2, onnxruntime 1.32.0).
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtensionWithHint},
)
