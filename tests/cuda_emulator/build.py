"""Build ``atss_cuda_emulated``: atss_core's CUDA kernels compiled for the CPU.

The ``.cu`` files of ``atss_core/csrc/cuda`` are rewritten for a C++ compiler and
compiled with ``simt.h`` force-included (the SIMT emulator) and the stand-in CUDA
headers of ``stubs/``; the CPU kernels of ``atss_core/csrc/cpu`` are compiled into
the same module, so tests compare the two on CPU tensors. The rewrite is textual
and minimal:

- ``kernel<<<grid, block, shmem, stream>>>(args)`` ->
  ``::atss_emu::Launch(grid, block, shmem, stream).kernel(kernel)(args)``;
- ``extern __shared__ T name[];`` -> ``T* name = ::atss_emu::dynamic_shared<T>();``;
- ``overrides``: named constants replaced by the caller (e.g. a smaller shared-memory
  budget, to reach the code path for large inputs with small ones); each must match
  exactly once, so a renamed constant fails the build instead of being ignored.

A ``#line`` directive keeps compiler messages pointing at the original ``.cu`` file.
"""
import glob
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(REPO_ROOT, "atss_core", "csrc")

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)<<<(.*?)>>>\(", re.S)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([\w:\s]+?)\s+(\w+)\s*\[\s*\]\s*;")


def rewrite_cuda_source(text, path, overrides=None):
    """Return ``text`` (the contents of the .cu file ``path``) ready for a C++ compiler."""
    text, launches = _LAUNCH.subn(r"::atss_emu::Launch(\2).kernel(\1)(", text)
    if "<<<" in text:
        raise ValueError(f"{path}: a kernel launch the emulator cannot rewrite is left")
    text = _EXTERN_SHARED.sub(r"\1* \2 = ::atss_emu::dynamic_shared<\1>();", text)
    for pattern, replacement in (overrides or {}).items():
        text, count = re.subn(pattern, replacement, text)
        if count != 1:
            raise ValueError(f"{path}: override {pattern!r} matched {count} times, expected once")
    if launches == 0 and "__global__" in text:
        raise ValueError(f"{path}: defines kernels but no launch was found")
    return f'#line 1 "{path}"\n{text}'


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def build(build_dir, overrides=None, sanitize=None, verbose=False):
    """Compile and import the emulated-kernel module; ``build_dir`` holds the objects.

    ``overrides``: {source basename: {regex: replacement}} applied to that .cu file.
    ``sanitize``: e.g. ``"address,undefined"``: compile with those GCC sanitizers, so an
    out-of-bounds access or undefined arithmetic in a kernel stops the process with a
    report (the sanitizer runtime must then be preloaded: ``LD_PRELOAD=$(gcc
    -print-file-name=libasan.so)``).
    """
    from torch.utils.cpp_extension import load

    os.makedirs(build_dir, exist_ok=True)
    overrides = overrides or {}
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    unknown = set(overrides) - {os.path.basename(p) for p in cuda_sources}
    if unknown:
        raise ValueError(f"overrides for unknown CUDA sources: {sorted(unknown)}")
    sources = [os.path.join(HERE, "bindings.cpp")]
    sources += sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    for cu in cuda_sources:
        name = os.path.basename(cu)
        with open(cu) as f:
            text = rewrite_cuda_source(f.read(), cu, overrides.get(name))
        target = os.path.join(build_dir, name[: -len(".cu")] + "_emulated.cpp")
        if _read(target) != text:  # rewrite only on change, so ninja rebuilds only what changed
            with open(target, "w") as f:
                f.write(text)
        sources.append(target)
    cflags = ["-O2", "-DWITH_CUDA", "-include", os.path.join(HERE, "simt.h"), "-Wno-unknown-pragmas"]
    ldflags = []
    name = "atss_cuda_emulated"
    if sanitize:
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
        ldflags += [f"-fsanitize={sanitize}"]
        name += "_" + re.sub(r"\W", "_", sanitize)
    return load(
        name=name,
        sources=sources,
        extra_include_paths=[os.path.join(HERE, "stubs"), CSRC, os.path.join(CSRC, "cuda")],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=build_dir,
        verbose=verbose,
    )
