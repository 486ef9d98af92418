"""A yacs ``CfgNode`` that fails loudly and helpfully.

``merge_from_file`` / ``merge_from_list`` / ``merge_from_other_cfg`` behave as in
yacs, except that:

* an unknown key raises :class:`ConfigError` naming the key, where it came from,
  and the closest existing keys;
* a value of the wrong type raises :class:`ConfigError` naming the key, the
  expected type and the value; an int is accepted where a float is expected and
  lists and tuples are interchangeable (as in yacs);
* config files are YAML only (``.yaml`` / ``.yml``, or no extension), parsed
  with ``yaml.safe_load``: yacs would import and run a ``.py`` config, so any
  other file is refused with :class:`ConfigError` before it is opened.
"""
import difflib
import os

from yacs.config import CfgNode as _YacsCfgNode


class ConfigError(ValueError):
    """A configuration file, option or value is not valid."""


YAML_EXTENSIONS = (".yaml", ".yml", "")


def _refuse_non_yaml(filename):
    ext = os.path.splitext(os.fspath(filename))[1]
    if ext.lower() not in YAML_EXTENSIONS:
        kind = "a Python file" if ext.lower() in (".py", ".pyc", ".pyw") else f"a {ext or 'extension-less'} file"
        raise ConfigError(
            f"config file {filename} is {kind}: configs are YAML files (.yaml or .yml), e.g. "
            "configs/atss/atss_R_50_FPN_1x.yaml. Python configs are not run."
        )


def _all_keys(node, prefix=""):
    keys = []
    for k, v in node.items():
        if isinstance(v, _YacsCfgNode):
            keys.extend(_all_keys(v, prefix + k + "."))
        else:
            keys.append(prefix + k)
    return keys


def _closest_keys(root, full_key, n=3):
    """Existing keys that look like ``full_key`` (typos, or the right leaf under
    another parent)."""
    candidates = _all_keys(root)
    close = difflib.get_close_matches(full_key, candidates, n=n, cutoff=0.6)
    leaf = full_key.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf]
    leaf_close = [
        c for c in candidates
        if difflib.get_close_matches(leaf, [c.rsplit(".", 1)[-1]], n=1, cutoff=0.8)
    ]
    out = []
    for c in close + same_leaf + leaf_close:
        if c not in out:
            out.append(c)
    return out[:n]


def _coerce(value, default, full_key, source):
    if isinstance(value, type(default)):
        return value
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(default)(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(
        f"config key {full_key} ({source}) expects a {type(default).__name__} "
        f"like {default!r}, got {type(value).__name__} {value!r}"
    )


class ConfigNode(_YacsCfgNode):
    """The config tree of atss (see :mod:`atss_core.config.defaults`)."""

    def _root(self):
        return self

    def _merge_dict(self, other, prefix, source, root):
        if self.is_frozen():
            raise ConfigError(
                f"cannot merge {source} into a frozen config; call cfg.defrost() first"
            )
        for k, v in other.items():
            full_key = prefix + k
            if k not in self:
                hint = _closest_keys(root, full_key)
                msg = f"unknown config key {full_key} ({source})"
                if hint:
                    msg += "; did you mean " + " or ".join(hint) + "?"
                raise ConfigError(msg)
            current = self[k]
            if isinstance(current, _YacsCfgNode):
                if not isinstance(v, dict):
                    raise ConfigError(
                        f"config key {full_key} ({source}) is a section with keys "
                        f"{sorted(current.keys())}, got the value {v!r}"
                    )
                current._merge_dict(v, full_key + ".", source, root)
            else:
                self[k] = _coerce(self._decode_cfg_value(v), current, full_key, source)

    @classmethod
    def _load_cfg_py_source(cls, filename):
        # yacs would import (run) the file: refused wherever it is reached from.
        _refuse_non_yaml(filename)
        raise ConfigError(f"config file {filename}: configs are YAML files (.yaml or .yml)")

    def merge_from_file(self, cfg_filename):
        """Merge the YAML file ``cfg_filename`` (``.yaml`` / ``.yml``; anything
        else, a ``.py`` config in particular, is refused and not opened)."""
        _refuse_non_yaml(cfg_filename)
        try:
            with open(cfg_filename, "r") as f:
                other = self._load_cfg_from_yaml_str(f.read())  # yaml.safe_load
        except FileNotFoundError:
            raise ConfigError(f"config file {cfg_filename} does not exist") from None
        except Exception as e:  # yaml syntax errors and the like
            raise ConfigError(f"cannot parse config file {cfg_filename}: {e}") from e
        self._merge_dict(other, "", f"in {cfg_filename}", self)

    def merge_from_other_cfg(self, cfg_other):
        self._merge_dict(cfg_other, "", "from another config", self)

    def merge_from_list(self, cfg_list):
        cfg_list = list(cfg_list)
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                "config options must come as KEY VALUE pairs, got an odd number of "
                f"items: {cfg_list}"
            )
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            nested = raw
            for part in reversed(full_key.split(".")):
                nested = {part: nested}
            self._merge_dict(nested, "", "command-line option", self)
