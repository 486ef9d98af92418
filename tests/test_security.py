"""Nothing the user loads runs code: Caffe2 .pkl weights are read with an
allow-list unpickler, .pth files with torch.load(weights_only=True), and
configs are YAML only (yacs would run a .py config).

The malicious files below would create a marker file when unpickled/imported;
each test checks that loading stops with a message naming the file and the
refused global, and that the marker does not exist. The tools are run as
subprocesses, end to end."""
import ast
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_cfg

from atss_core.config import ConfigError, ConfigNode
from atss_core.config import cfg as default_cfg
from atss_core.modeling.detector import build_detection_model
from atss_core.utils.c2_model_loading import UnsafePickleError, load_c2_pickle
from atss_core.utils.checkpoint import CheckpointError, DetectronCheckpointer, UnsafeCheckpointError

CONFIG = os.path.join(REPO_ROOT, "configs", "atss", "atss_R_50_FPN_1x.yaml")
TINY = ["MODEL.BACKBONE.CONV_BODY", "R-18-FPN-RETINANET", "MODEL.RESNETS.TRANS_FUNC", "BasicBlockWithFixedBatchNorm",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "64",
        "MODEL.ATSS.NUM_CONVS", "1", "MODEL.ATSS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu"]
CATALOG_NAME = "catalog://ImageNetPretrained/MSRA/R-50"  # -> $ATSS_WEIGHTS_DIR/R-50.pkl


class RunsShell:
    """Unpickling it would run ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OpensFile:
    """Unpickling it would create ``marker`` with open()."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


SYSTEM = f"{os.system.__module__}.{os.system.__name__}"  # posix.system
OPEN = f"{open.__module__}.{open.__name__}"  # io.open


def write_pickle(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def exec_pickle(marker):
    """A hand-written pickle calling builtins.exec (a builtin, but not an allowed one)."""
    code = f"open({str(marker)!r}, 'w').close()"
    return b"\x80\x02cbuiltins\nexec\nX" + struct.pack("<I", len(code)) + code.encode() + b"\x85R."


# ----------------------------------------------------------------- .pkl, in process
@pytest.mark.parametrize("make, refused", [
    (lambda m: RunsShell(m), SYSTEM),
    (lambda m: OpensFile(m), OPEN),
    (lambda m: {"blobs": {"conv1_w": np.zeros(3, np.float32), "res2_0_branch2a_w": RunsShell(m)}}, SYSTEM),
    (lambda m: {"blobs": {"conv1_w": OpensFile(m)}}, OPEN),
], ids=["os.system", "open", "os.system-inside-blobs", "open-inside-blobs"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pkl_is_refused_and_nothing_runs(tmp_path, make, refused, protocol):
    marker = tmp_path / "marker"
    path = write_pickle(tmp_path / "R-50.pkl", make(marker), protocol)
    with pytest.raises(UnsafePickleError) as err:
        load_c2_pickle(path)
    assert path in str(err.value) and refused in str(err.value) and err.value.global_name == refused
    assert not marker.exists()


def test_malicious_pkl_through_the_checkpointer(tmp_path):
    marker = tmp_path / "marker"
    exec_path = tmp_path / "exec.pkl"
    exec_path.write_bytes(exec_pickle(marker))
    cfg = load_cfg("atss_R_50_FPN_1x", TINY)
    model = build_detection_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for path, refused in ((write_pickle(tmp_path / "shell.pkl", RunsShell(marker)), SYSTEM),
                          (str(exec_path), "builtins.exec")):
        with pytest.raises(UnsafeCheckpointError) as err:
            DetectronCheckpointer(cfg, model).load(path, use_latest=False)
        assert isinstance(err.value, CheckpointError)
        msg = str(err.value)
        assert path in msg and refused in msg and "Nothing in it was run" in msg
        assert err.value.path == path and err.value.global_name == refused
    assert not marker.exists()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_malicious_pkl_through_the_catalog(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    write_pickle(tmp_path / "R-50.pkl", RunsShell(marker))
    monkeypatch.setenv("ATSS_WEIGHTS_DIR", str(tmp_path))
    cfg = load_cfg("atss_R_50_FPN_1x", TINY)
    with pytest.raises(UnsafeCheckpointError, match=SYSTEM):
        DetectronCheckpointer(cfg, build_detection_model(cfg)).load(CATALOG_NAME, use_latest=False)
    assert not marker.exists()


def test_only_latin1_codec_is_allowed(tmp_path):
    # _codecs.encode is how Python 3 pickles bytes with protocol 2: only latin1 passes.
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(pickle.UnpicklingError, match="latin1"):
        load_c2_pickle(str(path))
    cfg = load_cfg("atss_R_50_FPN_1x", TINY)
    with pytest.raises(CheckpointError, match="codec.pkl"):
        DetectronCheckpointer(cfg, build_detection_model(cfg)).load(str(path), use_latest=False)


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q\x00(X", b"garbage", pickle.dumps([1, 2]),
                                     pickle.dumps({"blobs": {"conv1_w": "text"}}),
                                     pickle.dumps({"blobs": {1: np.zeros(1)}})])
def test_corrupt_pkl_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    cfg = load_cfg("atss_R_50_FPN_1x", TINY)
    with pytest.raises(CheckpointError, match="bad.pkl") as err:
        DetectronCheckpointer(cfg, build_detection_model(cfg)).load(str(path), use_latest=False)
    assert not isinstance(err.value, UnsafeCheckpointError)


def test_genuine_pkl_with_every_numpy_pickle_form_still_loads(tmp_path):
    blobs = {"conv1_w": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "lr": np.float32(0.1),
             "model_iter": np.int64(3), "weight_order": np.array(["conv1_w"])}
    for protocol in (0, 2, 4, 5):
        path = write_pickle(tmp_path / f"p{protocol}.pkl", {"blobs": blobs}, protocol)
        loaded = load_c2_pickle(path)
        assert loaded.keys() == blobs.keys()
        for k, v in blobs.items():
            assert np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype, (protocol, k)


# ----------------------------------------------------------------- .pth
def test_pth_files_are_read_with_weights_only(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": RunsShell(marker)}, path)
    cfg = load_cfg("atss_R_50_FPN_1x", TINY)
    with pytest.raises(UnsafeCheckpointError, match="evil.pth") as err:
        DetectronCheckpointer(cfg, build_detection_model(cfg)).load(str(path), use_latest=False)
    assert SYSTEM in str(err.value) and err.value.global_name == SYSTEM
    assert "weights_only` set to `False`" not in str(err.value)  # torch's advice is not passed on
    assert not marker.exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth") as err:
        DetectronCheckpointer(cfg, build_detection_model(cfg)).load(str(junk), use_latest=False)
    assert "False" not in str(err.value) and not isinstance(err.value, UnsafeCheckpointError)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(CheckpointError):
        DetectronCheckpointer(cfg, build_detection_model(cfg)).load(str(path), use_latest=False)
    assert seen == [True]


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name):
            yield node, f"{node.func.value.id}.{node.func.attr}"


def test_no_code_loads_pickles_unsafely():
    """Every torch.load in the package, tools and demo passes weights_only=True;
    the only plain unpickling is comm.all_gather's (data of the run's own
    processes)."""
    unsafe = []
    for top in ("atss_core", "tools", "demo"):
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, top)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, REPO_ROOT)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node, called in _calls(tree):
                    if called == "torch.load":
                        flags = {k.arg: k.value for k in node.keywords}
                        if not (isinstance(flags.get("weights_only"), ast.Constant)
                                and flags["weights_only"].value is True):
                            unsafe.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
                    elif called in ("pickle.load", "pickle.loads", "pickle.Unpickler") \
                            and rel != os.path.join("atss_core", "utils", "comm.py"):
                        unsafe.append(f"{rel}:{node.lineno} {called}")
    assert not unsafe, unsafe


# ----------------------------------------------------------------- .py configs
def write_py_config(tmp_path, marker):
    path = tmp_path / "evil_config.py"
    path.write_text(f"open({str(marker)!r}, 'w').close()\ncfg = {{'MODEL': {{'DEVICE': 'cpu'}}}}\n")
    return str(path)


def test_py_config_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "marker"
    path = write_py_config(tmp_path, marker)
    with pytest.raises(ConfigError, match="YAML") as err:
        default_cfg.clone().merge_from_file(path)
    assert path in str(err.value) and "Python" in str(err.value)
    # The yacs entry point that would import it is closed too.
    with open(path) as f, pytest.raises(ConfigError, match="YAML"):
        ConfigNode.load_cfg(f)
    assert not marker.exists()


def test_yaml_configs_still_load(tmp_path):
    for name in ("c.yml", "c.YAML", "c"):
        path = tmp_path / name
        path.write_text("MODEL:\n  DEVICE: cpu\n")
        c = default_cfg.clone()
        c.merge_from_file(str(path))
        assert c.MODEL.DEVICE == "cpu"
    # a YAML file that looks like Python is parsed as YAML (with safe_load), never run
    path = tmp_path / "tricky.yaml"
    path.write_text("!!python/object/apply:os.system ['touch marker']\n")
    with pytest.raises(ConfigError, match="tricky.yaml"):
        default_cfg.clone().merge_from_file(str(path))


# ----------------------------------------------------------------- the tools, end to end
def run_tool(script, args, tmp_path, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=REPO_ROOT)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *args], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=300)


def tool_args(script, weight, tmp_path):
    """Command-line arguments that make ``script`` load ``weight`` (None: the config's
    MODEL.WEIGHT, i.e. catalog://ImageNetPretrained/MSRA/R-50)."""
    out = ["OUTPUT_DIR", str(tmp_path / "out")]
    if script == "demo/atss_demo.py":
        images = tmp_path / "images"
        images.mkdir(exist_ok=True)
        import cv2
        cv2.imwrite(str(images / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
        weights = ["--weights", weight] if weight else ["--allow-untrained"]
        return ["--config-file", CONFIG, *weights, "--images-dir", str(images),
                "--output-dir", str(tmp_path / "drawn"), *TINY]
    weights = ["MODEL.WEIGHT", weight] if weight else []
    extra = ["--skip-test"] if script == "tools/train_net.py" else []
    return ["--config-file", CONFIG, *extra, *TINY, *weights, *out]


TOOLS = ["tools/test_net.py", "tools/train_net.py", "demo/atss_demo.py"]


@pytest.mark.parametrize("via", ["path", "catalog"])
@pytest.mark.parametrize("script", TOOLS)
def test_tools_refuse_a_malicious_pkl(tmp_path, script, via):
    marker = tmp_path / "marker"
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    path = write_pickle(weights_dir / ("R-50.pkl" if via == "catalog" else "evil.pkl"), RunsShell(marker))
    proc = run_tool(script, tool_args(script, path if via == "path" else None, tmp_path), tmp_path,
                    {"ATSS_WEIGHTS_DIR": str(weights_dir)})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    if script == "demo/atss_demo.py":
        assert proc.returncode == 2, output
    assert path in proc.stderr and SYSTEM in proc.stderr, output
    assert "Traceback" not in output and "Loaded" not in output, output
    assert not marker.exists()
    assert not (tmp_path / "drawn" / "a.jpg").exists()


@pytest.mark.parametrize("script", TOOLS)
def test_tools_refuse_a_py_config(tmp_path, script):
    marker = tmp_path / "marker"
    config = write_py_config(tmp_path, marker)
    args = tool_args(script, str(tmp_path / "w.pth"), tmp_path)
    args[args.index(CONFIG)] = config
    proc = run_tool(script, args, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    if script == "demo/atss_demo.py":
        assert proc.returncode == 2, output
    assert config in proc.stderr and "YAML" in proc.stderr, output
    assert "Traceback" not in output, output
    assert not marker.exists()
