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
"""
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


def load_c2_pickle(path):
    """The blobs of a Caffe2 ``.pkl`` file as ``{name: ndarray}``."""
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    if isinstance(data, dict) and "blobs" in data:
        data = data["blobs"]
    if not isinstance(data, dict):
        raise UnknownLayoutError(f"{path} is a pickle but not a Caffe2 weights file (no blobs dict)")
    return data


def c2_to_body(blobs, source):
    """Caffe2 blob names -> ResNet body names (see the module docstring)."""
    out = {}
    unknown = []
    for name, value in blobs.items():
        if _C2_DROP.search(name):
            continue
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
