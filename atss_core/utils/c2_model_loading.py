"""Pretrained ImageNet backbones in other layouts, mapped onto our body names.

Two layouts are understood:

* Caffe2 / Detectron ``.pkl`` files (what ``catalog://ImageNetPretrained/...``
  names): a pickle of ``{"blobs": {name: ndarray}}`` (or the blobs dict
  itself) with names such as ``conv1_w``, ``res_conv1_bn_s``,
  ``res2_0_branch2a_w``, ``res3_1_branch2b_bn_b``, ``res4_0_branch1_w``.
  Their batch norm is already folded into a scale (``_bn_s``) and a bias
  (``_bn_b``), so ``running_mean`` / ``running_var`` keep their neutral 0 / 1.
* torchvision ImageNet ResNet/ResNeXt state dicts (``conv1.weight``,
  ``bn1.running_var``, ``layer1.0.conv1.weight``, ``fc.weight``, ...). Their
  batch norm uses eps = 1e-5, which is folded into ``running_var`` because our
  frozen batch norm adds none.

Both return ``{body_name: tensor}`` with names relative to the ResNet body
(``stem.conv1.weight``, ``layer1.0.bn1.bias``, ...).

A pickle can run any code while it loads, so ``.pkl`` files are read by
:class:`C2Unpickler`, which builds only what Detectron weight files hold: numpy
arrays, dtypes and scalars, builtin containers, strings and numbers. Any other
global stops the load with :class:`UnsafePickleError` before it is called:
nothing in the file runs.
"""
import builtins
import collections
import pickle
import re

import numpy as np
import torch

_C2_BRANCH = {"1": "downsample", "2a": "1", "2b": "2", "2c": "3"}
_C2_BLOCK = re.compile(r"^res(\d+)_(\d+)_branch(1|2a|2b|2c)_(w|b|bn_s|bn_b|gn_s|gn_b)$")
_C2_DROP = re.compile(r"(^fc|^pred|_momentum$|^lr$|^weight_order$|^model_iter$)")
_TORCHVISION_BN_EPS = 1e-5


class UnknownLayoutError(ValueError):
    pass


class UnsafePickleError(pickle.UnpicklingError):
    """A ``.pkl`` file names a global that weight files never need (e.g.
    ``os.system``): refused before it is called."""

    def __init__(self, path, global_name):
        self.path = path
        self.global_name = global_name
        super().__init__(
            f"refused to load {path}: its pickle calls {global_name}, which Caffe2/Detectron weight "
            "files never contain (only numpy arrays, strings and numbers); the file may be "
            "malicious or is not a weights file. Nothing in it was run."
        )


def _numpy_core(submodule):
    """``numpy._core.<submodule>`` (numpy >= 2), else ``numpy.core.<submodule>``."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3 pickles ``bytes`` with protocol 2, and
    nothing else: other codecs are refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}: only latin1 byte strings are allowed")
    return text.encode("latin1")


_SAFE_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str",
                  "int", "float", "complex", "bool")


def _allowed_globals():
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    numpy_objects = {
        "_reconstruct": multiarray._reconstruct,  # ndarray protocols 0-4
        "scalar": multiarray.scalar,              # numpy scalars
        "_frombuffer": numeric._frombuffer,       # ndarray protocol 5
    }
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode,
               ("collections", "OrderedDict"): collections.OrderedDict}
    for package in ("numpy.core", "numpy._core"):  # files written by numpy 1.x and 2.x
        allowed[(f"{package}.multiarray", "_reconstruct")] = numpy_objects["_reconstruct"]
        allowed[(f"{package}.multiarray", "scalar")] = numpy_objects["scalar"]
        allowed[(f"{package}.numeric", "_frombuffer")] = numpy_objects["_frombuffer"]
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 names
        for name in _SAFE_BUILTINS:
            allowed[(module, name)] = getattr(builtins, name)
    allowed[("__builtin__", "unicode")] = str
    allowed[("__builtin__", "long")] = int
    return allowed


class C2Unpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays, dtypes and scalars, builtin
    containers, strings and numbers; any other global raises
    :class:`UnsafePickleError` (naming ``path`` and the global) without being
    imported or called. Python 2 strings are decoded as latin1."""

    _ALLOWED = None

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self.path = path
        if C2Unpickler._ALLOWED is None:
            C2Unpickler._ALLOWED = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(self.path, f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"{self.path}: persistent ids are not allowed in a weights file")


def load_c2_pickle(path):
    """The blobs of a Caffe2 ``.pkl`` file as ``{name: ndarray}``, read with
    :class:`C2Unpickler` (raises :class:`UnsafePickleError` for a file that
    would run code)."""
    with open(path, "rb") as f:
        data = C2Unpickler(f, path).load()
    if isinstance(data, dict) and "blobs" in data:
        data = data["blobs"]
    if not isinstance(data, dict):
        raise UnknownLayoutError(f"{path} is a pickle but not a Caffe2 weights file (no blobs dict)")
    return data


def c2_to_body(blobs, source):
    """Caffe2 blob names -> ResNet body names (see the module docstring)."""
    out = {}
    unknown = []
    bad_names = [repr(name) for name in blobs if not isinstance(name, str)]
    if bad_names:
        raise UnknownLayoutError(f"{source}: blob names that are not strings: {bad_names[:10]}")
    for name, value in blobs.items():
        if _C2_DROP.search(name):
            continue
        if not isinstance(value, (np.ndarray, np.generic)) or value.dtype.kind not in "biuf":
            raise UnknownLayoutError(
                f"{source}: blob {name} is a {type(value).__name__}"
                + (f" of {value.dtype}" if isinstance(value, (np.ndarray, np.generic)) else "")
                + ", not a numeric array"
            )
        tensor = torch.as_tensor(np.asarray(value)).float()
        if name == "conv1_w":
            out["stem.conv1.weight"] = tensor
            continue
        stem = re.match(r"^res_conv1_(bn|gn)_(s|b)$", name)
        if stem:
            out["stem.bn1." + ("weight" if stem.group(2) == "s" else "bias")] = tensor
            continue
        block = _C2_BLOCK.match(name)
        if not block:
            unknown.append(name)
            continue
        stage, index, branch, kind = block.groups()
        prefix = f"layer{int(stage) - 1}.{index}."
        if branch == "1":
            module = prefix + ("downsample.0" if kind in ("w", "b") else "downsample.1")
        else:
            n = _C2_BRANCH[branch]
            module = prefix + (f"conv{n}" if kind in ("w", "b") else f"bn{n}")
        leaf = {"w": "weight", "b": "bias", "bn_s": "weight", "gn_s": "weight", "bn_b": "bias", "gn_b": "bias"}[kind]
        out[f"{module}.{leaf}"] = tensor
    if unknown:
        raise UnknownLayoutError(
            f"{source}: Caffe2 blobs that do not belong to a ResNet body: {sorted(unknown)[:10]}"
        )
    return out


def is_torchvision_resnet(state_dict):
    return "conv1.weight" in state_dict and "layer1.0.conv1.weight" in state_dict


def torchvision_to_body(state_dict):
    """torchvision ResNet names -> ResNet body names, eps folded into running_var."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        if name.startswith(("conv1.", "bn1.")):
            name = "stem." + name
        if name.endswith("running_var"):
            value = value + _TORCHVISION_BN_EPS
        out[name] = value
    return out
