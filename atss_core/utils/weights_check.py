"""Refusing weights that hold NaN or infinite values.

A checkpoint of a diverged training (all-NaN weights) otherwise evaluates to
AP 0 without a word, and resuming from it stops at the first iteration with a
"non-finite loss" that does not say the weights were already broken.
"""
import torch

_MAX_LISTED = 5


class NonFiniteWeightsError(RuntimeError):
    """A state dict (checkpoint) with NaN or infinite values."""


def non_finite_tensors(state_dict):
    """``[(name, number of NaN, number of +-inf, numel)]`` of the floating-point
    tensors of ``state_dict`` that are not all finite, in the dict's order. One
    host sync when everything is finite."""
    names, flags = [], []
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            names.append(name)
            flags.append(torch.isfinite(value).all())
    if not flags:
        return []
    finite = torch.stack(flags).cpu().tolist()
    bad = []
    for name, ok in zip(names, finite):
        if not ok:
            value = state_dict[name]
            nan = int(torch.isnan(value).sum())
            inf = int(torch.isinf(value).sum())
            bad.append((name, nan, inf, value.numel()))
    return bad


def check_finite_state_dict(state_dict, path):
    """Raise :class:`NonFiniteWeightsError` naming ``path`` and the first
    non-finite tensors when a floating-point tensor of ``state_dict`` holds a
    NaN or an infinite value; return ``state_dict`` otherwise."""
    bad = non_finite_tensors(state_dict)
    if not bad:
        return state_dict
    total = sum(1 for v in state_dict.values()
                if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()))
    listed = "; ".join(
        f"{name} ({', '.join(filter(None, [f'{nan} NaN' if nan else '', f'{inf} inf' if inf else '']))}"
        f" of {numel} values)"
        for name, nan, inf, numel in bad[:_MAX_LISTED]
    )
    more = f"; ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    raise NonFiniteWeightsError(
        f"the weights in {path} are not finite: {len(bad)} of {total} tensors hold NaN or infinite "
        f"values ({listed}{more}). The training that wrote them diverged; use an earlier "
        "checkpoint (a training folder's last_good_checkpoint names the last one saved while the "
        "loss was sane)."
    )
