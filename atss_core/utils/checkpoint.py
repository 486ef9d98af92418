"""Saving and loading checkpoints.

:class:`DetectronCheckpointer` loads, and tells apart by their content:

(a) checkpoints released for the reference implementation:
    ``{"model": state_dict}`` with names possibly prefixed ``module.``;
(b) this project's checkpoints: ``{"model", "optimizer", "scheduler",
    "iteration", ...}``;
(c) ImageNet-pretrained ResNet/ResNeXt weights in the torchvision layout;
(d) Caffe2/Detectron ``.pkl`` weights, as named by ``catalog://`` in the
    reference configs (resolved to a local file by
    :class:`~atss_core.config.paths_catalog.ModelCatalog`; nothing is downloaded).

Nothing in a weights file runs: ``.pth`` files are read with
``torch.load(weights_only=True)`` and ``.pkl`` files with an unpickler that
builds only numpy arrays, strings and numbers
(:class:`~atss_core.utils.c2_model_loading.C2Unpickler`); a file that names
anything else (``os.system``, ...) stops with :class:`UnsafeCheckpointError`.

A whole-model checkpoint (a, b) must match the model exactly: the same tensor
names and shapes. Pretrained weights (c, d) must cover the whole backbone body
(batch-norm statistics of Caffe2 files and deformable-conv offsets excepted,
which keep their initial values) and nothing else. Anything else stops with a
:class:`CheckpointError` listing what did not match; a model is never loaded
by halves.

Saving is atomic and records the file in ``save_dir/last_checkpoint``, from
which :meth:`DetectronCheckpointer.load` resumes.
"""
import logging
import os
import pickle
import re

import torch

from atss_core.config.paths_catalog import ModelCatalog

from .c2_model_loading import (
    UnknownLayoutError,
    UnsafePickleError,
    c2_to_body,
    is_torchvision_resnet,
    load_c2_pickle,
    torchvision_to_body,
)
from .io import atomic_torch_save, atomic_write_text

_BODY_PREFIX = "backbone.body."
_MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded into the model."""


class UnsafeCheckpointError(CheckpointError):
    """A weights file whose pickle would run code (names a global other than
    numpy arrays, strings and numbers): refused before anything in it runs.
    ``global_name`` is the refused ``module.name``."""

    def __init__(self, message, path=None, global_name=None):
        super().__init__(message)
        self.path = path
        self.global_name = global_name


def _listing(title, names):
    names = sorted(names)
    shown = "\n    ".join(names[:_MAX_LISTED])
    more = f"\n    ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return f"  {title} ({len(names)}):\n    {shown}{more}"


def _weights_only_refusal(error):
    """(what torch's weights-only unpickler refused, the refused ``module.name``
    or None), from its message, leaving out its advice to load with
    ``weights_only=False``."""
    message = str(error)
    kept = [p.strip() for p in message.split("\n\n") if p.strip() and not p.strip().startswith(
        ("Weights only load failed", "Check the documentation", "Please file an issue"))]
    detail = " ".join(kept) or "torch.load(weights_only=True) refused its content"
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return detail, (match.group(1) if match else None)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def resolve_weight_path(f):
    """A path, or a ``catalog://`` name resolved to its local file."""
    if f.startswith("catalog://"):
        return ModelCatalog.get(f[len("catalog://"):])
    return f


class DetectronCheckpointer:
    """Saves and loads model (+ optimizer, scheduler, iteration) checkpoints."""

    def __init__(self, cfg, model, optimizer=None, scheduler=None, save_dir="", save_to_disk=None,
                 logger=None):
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.save_dir = save_dir
        self.save_to_disk = bool(save_dir) if save_to_disk is None else save_to_disk
        self.logger = logger or logging.getLogger(__name__)
        # What the last load() read: "model" (a whole detector), "torchvision" or
        # "caffe2" (backbone weights only), None when nothing was loaded.
        self.loaded_layout = None

    # ------------------------------------------------------------------ save
    def save(self, name, **extra):
        """Write ``save_dir/<name>.pth`` atomically and point ``last_checkpoint``
        at it. ``extra`` (e.g. ``iteration``) is stored alongside."""
        if not self.save_dir or not self.save_to_disk:
            return None
        data = {"model": _unwrap(self.model).state_dict()}
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(path)
        return path

    def tag_last_checkpoint(self, path):
        atomic_write_text(os.path.basename(path), os.path.join(self.save_dir, "last_checkpoint"))

    def has_checkpoint(self):
        return bool(self.save_dir) and os.path.exists(os.path.join(self.save_dir, "last_checkpoint"))

    def get_checkpoint_file(self):
        """The file ``last_checkpoint`` points to ("" when there is none)."""
        if not self.has_checkpoint():
            return ""
        with open(os.path.join(self.save_dir, "last_checkpoint")) as f:
            name = f.read().strip()
        path = name if os.path.isabs(name) else os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(
                f"{os.path.join(self.save_dir, 'last_checkpoint')} points to {path}, which does not "
                "exist; delete last_checkpoint to start over or restore the file"
            )
        return path

    # ------------------------------------------------------------------ load
    def load(self, f=None, use_latest=True):
        """Load ``save_dir``'s last checkpoint when there is one (and
        ``use_latest``), else ``f`` (default ``cfg.MODEL.WEIGHT``). Returns the
        checkpoint's other entries (e.g. ``{"iteration": 5000}``); ``{}`` when
        nothing was loaded."""
        self.loaded_layout = None
        if use_latest and self.has_checkpoint():
            f = self.get_checkpoint_file()
        elif f is None:
            f = self.cfg.MODEL.WEIGHT if self.cfg is not None else ""
        if not f:
            self.logger.info("No checkpoint found: the model keeps its initialisation.")
            return {}
        path = resolve_weight_path(f)
        self.logger.info("Loading checkpoint from %s", path)
        checkpoint = self._load_file(path)
        kind = checkpoint.pop("__layout__")
        if kind == "model":
            self._load_full_model(checkpoint.pop("model"), path)
        else:
            self._load_backbone_body(checkpoint.pop("model"), path, kind)
        self.loaded_layout = kind
        if "optimizer" in checkpoint and self.optimizer is not None:
            self.logger.info("Loading optimizer state from %s", path)
            self.optimizer.load_state_dict(checkpoint.pop("optimizer"))
        if "scheduler" in checkpoint and self.scheduler is not None:
            self.logger.info("Loading scheduler state from %s", path)
            self.scheduler.load_state_dict(checkpoint.pop("scheduler"))
        return checkpoint

    def _load_file(self, path):
        """Read ``path`` into ``{"__layout__": "model" | "torchvision" | "caffe2",
        "model": {name: tensor}, ...}``."""
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint file {path} does not exist (MODEL.WEIGHT or the path given)")
        if path.endswith(".pkl"):
            try:
                blobs = load_c2_pickle(path)
            except UnsafePickleError as e:
                raise UnsafeCheckpointError(str(e), path, e.global_name) from None
            except UnknownLayoutError as e:
                raise CheckpointError(str(e)) from None
            except Exception as e:  # truncated or corrupt pickles raise all sorts
                raise CheckpointError(
                    f"{path} is not a Caffe2 weights file: {type(e).__name__}: {e}") from None
            try:
                return {"__layout__": "caffe2", "model": c2_to_body(blobs, path)}
            except UnknownLayoutError as e:
                raise CheckpointError(f"{path} is not a Caffe2 weights file: {e}") from None
        # weights_only: torch's own allow-list unpickler; never set it to False.
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # what weights_only refused, without torch's advice
            detail, refused = _weights_only_refusal(e)
            if refused:
                raise UnsafeCheckpointError(
                    f"refused to load {path}: it holds {refused}, which a checkpoint of tensors never "
                    "contains; the file may be malicious. Nothing in it was run (checkpoints are read "
                    "with torch.load(weights_only=True)).", path, refused) from None
            raise CheckpointError(
                f"{path} is not a checkpoint this framework can read (a torch .pth of a state dict "
                f"or {{'model': state_dict}}, or a Caffe2 .pkl): {detail}") from None
        except Exception as e:
            raise CheckpointError(
                f"{path} is not a checkpoint this framework can read (a torch .pth of a "
                f"state dict or {{'model': state_dict}}, or a Caffe2 .pkl): {e}"
            ) from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict or a checkpoint")
        if "model" in data and isinstance(data["model"], dict):
            data = dict(data)
        elif "state_dict" in data and isinstance(data["state_dict"], dict):
            data = {"model": data["state_dict"]}
        else:
            data = {"model": data}
        state = data["model"]
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad or not state:
            raise CheckpointError(
                f"{path} is not a state dict: "
                + (f"entries that are not tensors: {bad[:10]}" if bad else "it is empty")
            )
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        if is_torchvision_resnet(state):
            data["model"] = torchvision_to_body(state)
            data["__layout__"] = "torchvision"
            return data
        data["model"] = state
        data["__layout__"] = "model"
        return data

    def _load_full_model(self, state, path):
        model = _unwrap(self.model)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        ]
        if missing or unexpected or mismatched:
            parts = [f"checkpoint {path} does not fit the model built from the config:"]
            if missing:
                parts.append(_listing("missing from the checkpoint", missing))
            if unexpected:
                parts.append(_listing("in the checkpoint but not in the model", unexpected))
            if mismatched:
                parts.append(_listing("shape mismatches", mismatched))
            parts.append(
                "Check that the config (backbone, DCN, NUM_CLASSES, ...) is the one the checkpoint "
                "was trained with."
            )
            raise CheckpointError("\n".join(parts))
        model.load_state_dict(state, strict=True)

    def _load_backbone_body(self, body_state, path, layout):
        model = _unwrap(self.model)
        own = {k[len(_BODY_PREFIX):]: v for k, v in model.state_dict().items() if k.startswith(_BODY_PREFIX)}
        # A deformable stage keeps its 3x3 weight under conv2.conv.
        renamed = {}
        for k, v in body_state.items():
            if k not in own and k.endswith(".conv2.weight") and k.replace(".conv2.", ".conv2.conv.") in own:
                k = k.replace(".conv2.", ".conv2.conv.")
            renamed[k] = v
        unexpected = [k for k in renamed if k not in own]
        mismatched = [
            f"{k}: weights {tuple(renamed[k].shape)} vs model {tuple(own[k].shape)}"
            for k in renamed
            if k in own and renamed[k].shape != own[k].shape
        ]
        keeps_init = (".offset.",) + ((".running_mean", ".running_var") if layout == "caffe2" else ())
        missing = [k for k in own if k not in renamed and not any(s in k for s in keeps_init)]
        if missing or unexpected or mismatched:
            parts = [f"pretrained {layout} weights {path} do not fit the backbone body "
                     f"({self.cfg.MODEL.BACKBONE.CONV_BODY if self.cfg is not None else 'model'}):"]
            if missing:
                parts.append(_listing("body tensors the weights lack", missing))
            if unexpected:
                parts.append(_listing("weights with no place in the body", unexpected))
            if mismatched:
                parts.append(_listing("shape mismatches", mismatched))
            parts.append("Check MODEL.BACKBONE.CONV_BODY, MODEL.RESNETS.NUM_GROUPS / WIDTH_PER_GROUP "
                         "and that the file is the backbone the config names.")
            raise CheckpointError("\n".join(parts))
        result = model.load_state_dict({_BODY_PREFIX + k: v for k, v in renamed.items()}, strict=False)
        self.logger.info(
            "Loaded %d backbone tensors from %s (%s layout); %d tensors keep their initialisation",
            len(renamed), path, layout, len(result.missing_keys),
        )
