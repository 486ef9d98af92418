"""Run safety: one training per output folder (lock), a full disk while saving,
temporaries left by a killed save, non-finite weights, and the tools' one-line
errors with exit status 2. The training-loop side (divergence) is in
test_train_loop.py and test_train.py."""
import errno
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

from conftest import REPO_ROOT

from atss_core.config import ConfigError
from atss_core.config.paths_catalog import ModelCatalog, UnknownWeightsError
from atss_core.utils import io as atss_io
from atss_core.utils.checkpoint import DetectronCheckpointer
from atss_core.utils.io import (
    DiskFullError,
    atomic_torch_save,
    atomic_write_text,
    remove_stale_temporaries,
    stale_temporaries,
    tensor_bytes,
)
from atss_core.utils.run_lock import LOCK_NAME, RunLock, RunLockError, lock_output_dir, read_lock_info
from atss_core.utils.weights_check import NonFiniteWeightsError, check_finite_state_dict

TOOLS = os.path.join(REPO_ROOT, "tools")
TRAINING_TEMPORARIES = r"model_[^/]*\.pth|last_checkpoint|last_good_checkpoint|config\.yml"


@pytest.fixture(autouse=True)
def _restore_atss_logger(restore_atss_logger):
    """Every test here runs a tool's main(): conftest's restore_atss_logger."""


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------- lock
HOLDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from atss_core.utils.run_lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    if len(sys.argv) > 2 and sys.argv[2] == "fork":
        child = os.fork()
        if child == 0:          # a data-loader worker, say: outlives its parent
            time.sleep(120)
            os._exit(0)
        print("child", child, flush=True)
    print("locked", flush=True)
    time.sleep(120)
""")


def start_holder(tmp_path, folder, *extra):
    script = tmp_path / "hold_lock.py"
    script.write_text(HOLDER.format(repo=REPO_ROOT))
    proc = subprocess.Popen([sys.executable, str(script), str(folder), *extra], stdout=subprocess.PIPE,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.split())
        if line.startswith("locked"):
            break
    assert proc.poll() is None, "the lock holder ended early"
    return proc, lines


def kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_second_process_is_refused_naming_the_first_and_kill_9_frees_the_lock(tmp_path):
    folder = tmp_path / "run"
    holder, _ = start_holder(tmp_path, folder)
    try:
        with pytest.raises(RunLockError) as refused:
            RunLock(str(folder)).acquire()
        message = str(refused.value)
        assert f"OUTPUT_DIR {folder} is in use by another training run: process {holder.pid}" in message
        assert "hold_lock.py" in message, "the holder's command line"
        assert "set OUTPUT_DIR to another folder" in message
        assert read_lock_info(str(folder / LOCK_NAME))["pid"] == holder.pid
    finally:
        kill9(holder)
    # The killed holder left its details in the file, but not its lock.
    lock = RunLock(str(folder)).acquire()
    try:
        assert read_lock_info(str(folder / LOCK_NAME))["pid"] == os.getpid()
    finally:
        lock.release()
    assert (folder / LOCK_NAME).read_text() == "", "a released lock file is emptied"


def test_forked_children_do_not_keep_a_killed_holder_s_lock(tmp_path):
    folder = tmp_path / "run"
    holder, lines = start_holder(tmp_path, folder, "fork")
    child = int(next(words[1] for words in lines if words[0] == "child"))
    try:
        kill9(holder)
        os.kill(child, 0)  # the child still runs...
        RunLock(str(folder)).acquire().release()  # ...and the lock is free
    finally:
        os.kill(child, signal.SIGKILL)


def test_lock_is_exclusive_within_a_process_and_reusable(tmp_path):
    first = RunLock(str(tmp_path)).acquire()
    with pytest.raises(RunLockError, match=f"process {os.getpid()}"):
        RunLock(str(tmp_path)).acquire()
    first.release()
    with lock_output_dir(str(tmp_path)) as again:  # one process: the main one locks
        assert again.held
    assert not again.held


# ---------------------------------------------------------------- disk full
def _fill_then_fail(error, written=b"x" * 1000):
    def fake_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(written)
        raise error
    return fake_save


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1152 vs 1040"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["torch-writer", "ENOSPC"])
def test_full_disk_keeps_the_previous_checkpoint_and_says_what_is_needed(tmp_path, monkeypatch, error):
    path = tmp_path / "model_0000004.pth"
    atomic_torch_save({"w": torch.ones(3)}, str(path))
    big = {"model": {"w": torch.zeros(1000, 250)}}  # 1,000,000 bytes
    assert tensor_bytes(big) == 10**6
    monkeypatch.setattr(torch, "save", _fill_then_fail(error))
    monkeypatch.setattr(atss_io.shutil, "disk_usage", lambda folder: types.SimpleNamespace(free=4096))
    with pytest.raises(DiskFullError) as full:
        atomic_torch_save(big, str(path))
    message = str(full.value)
    assert f"cannot write {path}: the disk is full in {tmp_path}" in message
    assert "the checkpoint needs about 976.6 KiB; 4.0 KiB are free there" in message
    assert "keeps its previous content" in message and "Free space" in message
    assert full.value.errno == errno.ENOSPC and isinstance(full.value, OSError)
    assert (full.value.needed_bytes, full.value.free_bytes) == (10**6, 4096)
    assert os.listdir(tmp_path) == ["model_0000004.pth"], "no temporary file left"
    assert torch.equal(torch.load(str(path), weights_only=True)["w"], torch.ones(3))


def test_torch_writer_failure_with_room_left_says_probably_full(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _fill_then_fail(
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")))
    with pytest.raises(DiskFullError, match="writing failed, most likely because the disk was full"):
        atomic_torch_save({"w": torch.ones(3)}, str(tmp_path / "m.pth"))
    assert os.listdir(tmp_path) == []


def test_full_disk_at_fsync_and_other_errors(tmp_path, monkeypatch):
    path = tmp_path / "last_checkpoint"
    atomic_write_text("model_0000002.pth", str(path))

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(atss_io.os, "fsync", no_space)
        with pytest.raises(DiskFullError, match=r"the file needs about 17 bytes"):
            atomic_write_text("model_0000004.pth", str(path))
    assert path.read_text() == "model_0000002.pth" and os.listdir(tmp_path) == ["last_checkpoint"]
    # Other failures pass through unchanged (and leave no temporary either).
    monkeypatch.setattr(torch, "save", _fill_then_fail(RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="^something else$"):
        atomic_torch_save({}, str(tmp_path / "m.pth"))
    assert os.listdir(tmp_path) == ["last_checkpoint"]


def test_checkpointer_on_a_full_disk_keeps_last_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 1)
    checkpointer = DetectronCheckpointer(None, model, save_dir=str(tmp_path))
    checkpointer.save("model_0000002", iteration=2)
    monkeypatch.setattr(torch, "save", _fill_then_fail(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(DiskFullError, match="model_0000004.pth: the disk is full"):
        checkpointer.save("model_0000004", iteration=4)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000002.pth"]


def test_train_net_cli_on_a_full_disk(tmp_path):
    """The real command: the second checkpoint meets a full disk. One line,
    exit status 2, the first checkpoint still the one to resume from."""
    from test_train import CONFIG, DATA_DIR, TINY

    out = tmp_path / "run"
    wrapper = textwrap.dedent(f"""
        import errno, runpy, sys, torch
        real_save, calls = torch.save, []
        def save(obj, f, *a, **k):
            calls.append(f)
            if len(calls) == 2:
                open(f, "wb").write(b"x" * 100)
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
            return real_save(obj, f, *a, **k)
        torch.save = save
        sys.argv = ["tools/train_net.py"] + sys.argv[1:]
        runpy.run_path({os.path.join(TOOLS, 'train_net.py')!r}, run_name="__main__")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, "--skip-test", "--config-file", CONFIG, *TINY, "OUTPUT_DIR", str(out),
         "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.LOG_PERIOD", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, ATSS_DATA_DIR=DATA_DIR, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"train_net.py: error: cannot write {out / 'model_0000002.pth'}: " in proc.stderr
    assert "disk was full" in proc.stderr and "the checkpoint needs about" in proc.stderr
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


# ------------------------------------------------------- leftover temporaries
def test_only_the_training_s_own_temporaries_are_removed(tmp_path):
    stale = [".model_0000002.pth.k2j4_x9a.tmp", ".model_final.pth.abcdefgh.tmp",
             ".last_checkpoint.a1b2c3d4.tmp", ".last_good_checkpoint.zzzzzzzz.tmp", ".config.yml.q1w2e3r4.tmp"]
    kept = ["model_0000002.pth", ".model_0000002.pth.tmp", ".bbox.json.abcdefgh.tmp",
            ".test_config.yml.abcdefgh.tmp", "model_0000002.pth.abcdefgh.tmp", ".model_1.pth.short.tmp",
            "notes.txt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"12345")
    (tmp_path / ".model_9.pth.dirdirdi.tmp").mkdir()  # not a file: kept
    assert [os.path.basename(p) for p in stale_temporaries(str(tmp_path), TRAINING_TEMPORARIES)] == sorted(stale)
    removed = remove_stale_temporaries(str(tmp_path), TRAINING_TEMPORARIES)
    assert sorted(os.path.basename(p) for p, _ in removed) == sorted(stale)
    assert sum(size for _, size in removed) == 5 * len(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [".model_9.pth.dirdirdi.tmp"])


def test_writer_temporaries_match_the_cleanup_pattern(tmp_path, monkeypatch):
    """The pattern is the writer's own naming: catch a temporary mid-write."""
    seen = []

    def spy_save(obj, f, *args, **kwargs):
        seen.append(stale_temporaries(str(tmp_path), TRAINING_TEMPORARIES))
        raise KeyboardInterrupt  # as if killed mid-save

    monkeypatch.setattr(torch, "save", spy_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({}, str(tmp_path / "model_0000007.pth"))
    (found,) = seen[0]
    assert os.path.basename(found).startswith(".model_0000007.pth.")


# ------------------------------------------------------ non-finite weights
def test_check_finite_state_dict_names_the_file_and_the_tensors(tmp_path):
    state = {"a.weight": torch.ones(4), "b.bias": torch.tensor([1.0, float("nan"), float("inf")]),
             "steps": torch.tensor(3), "c.weight": torch.full((2, 2), float("nan"))}
    with pytest.raises(NonFiniteWeightsError) as error:
        check_finite_state_dict(state, "run/model_final.pth")
    message = str(error.value)
    assert "the weights in run/model_final.pth are not finite: 2 of 3 tensors" in message
    assert "b.bias (1 NaN, 1 inf of 3 values); c.weight (4 NaN of 4 values)" in message
    assert "last_good_checkpoint" in message
    ok = {"a": torch.ones(2), "n": torch.tensor(1)}
    assert check_finite_state_dict(ok, "x.pth") is ok


def test_test_net_refuses_all_nan_weights(tmp_path, capsys, monkeypatch):
    """A checkpoint of a diverged run: one clear line, exit status 2, instead
    of AP 0."""
    from test_test_net import CONFIG, DATA_DIR, MODEL_OPTS, TEST_OPTS, make_cfg

    from atss_core.modeling.detector import build_detection_model

    model = build_detection_model(make_cfg())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = DetectronCheckpointer(make_cfg(), model, save_dir=str(tmp_path)).save("model_final")
    tool = load_tool("test_net")
    monkeypatch.setenv("ATSS_DATA_DIR", DATA_DIR)
    status = tool.cli(["--config-file", CONFIG, *MODEL_OPTS, *TEST_OPTS, "MODEL.WEIGHT", path,
                       "DATASETS.TEST", "('coco128_val',)", "OUTPUT_DIR", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert status == 2
    assert f"test_net.py: error: the weights in {path} are not finite" in err
    assert not (tmp_path / "eval" / "inference").exists()


# ------------------------------------------------------- catalog and tools
def test_unknown_catalog_name_is_a_config_error_naming_the_known_ones():
    with pytest.raises(UnknownWeightsError) as error:
        ModelCatalog.get("ImageNetPretrained/MSRA/R-5O")
    assert isinstance(error.value, ConfigError) and isinstance(error.value, KeyError)
    message = str(error.value)
    assert message.startswith("MODEL.WEIGHT catalog://ImageNetPretrained/MSRA/R-5O is not a known")
    assert "catalog://ImageNetPretrained/MSRA/R-50" in message and "file path" in message


@pytest.mark.parametrize("opts, expected", [
    (["INPUT.MAX_SIZE_TRAIN", "0"],
     "INPUT.MAX_SIZE_TRAIN caps the longer image side in pixels and must be >= 1, got 0"),
    (["SOLVER.BASE_LR", "-0.01"], "SOLVER.BASE_LR must be a positive learning rate, got -0.01"),
    (["MODEL.WEIGHT", "catalog://nope"], "MODEL.WEIGHT catalog://nope is not a known weights name"),
])
def test_train_net_config_mistakes_are_one_line_and_status_2(opts, expected, tmp_path, capsys):
    from test_train import CONFIG

    tool = load_tool("train_net")
    status = tool.cli(["--config-file", CONFIG, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "run"), *opts])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"train_net.py: error: {expected}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists(), "nothing written for a refused config"


def test_test_net_max_size_test_0_is_a_message():
    from test_test_net import CONFIG

    tool = load_tool("test_net")
    with pytest.raises(ConfigError, match="INPUT.MAX_SIZE_TEST caps the longer image side"):
        tool.load_config(tool.parse_args(["--config-file", CONFIG, "MODEL.WEIGHT", "x.pth",
                                          "INPUT.MAX_SIZE_TEST", "0"]))


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    for name in ("train_net", "test_net", "compute_class_thresholds"):
        tool = load_tool(name)

        def broken(argv=None):
            raise ZeroDivisionError("a bug")

        monkeypatch.setattr(tool, "main", broken)
        with pytest.raises(ZeroDivisionError):
            tool.cli([])


def test_tools_exit_with_status_2_and_one_line(tmp_path):
    """The real commands (a process each): a framework error is one line on
    stderr and exit status 2."""
    from test_test_net import CONFIG

    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    results = tmp_path / "bbox.json"
    results.write_text("[]")
    cases = [
        (["compute_class_thresholds.py", "--results", str(results), "--dataset", "nope",
          "--output", str(tmp_path / "t.json")], "compute_class_thresholds.py: error: unknown dataset 'nope'"),
        (["test_net.py", "--config-file", CONFIG, "MODEL.DEVICE", "cpu", "MODEL.WEIGHT", "x.pth",
          "INPUT.MAX_SIZE_TEST", "0"], "test_net.py: error: INPUT.MAX_SIZE_TEST caps the longer image side"),
    ]
    for args, expected in cases:
        proc = subprocess.run([sys.executable, os.path.join(TOOLS, args[0]), *args[1:]], cwd=str(tmp_path),
                              env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith(expected) and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_two_process_run_refused_together_when_the_folder_is_locked(tmp_path):
    """torchrun, 2 processes, folder locked by another run: the main process
    is refused and shares the message, so both stop (no hang in a collective)."""
    from test_train import CONFIG, DATA_DIR, TINY

    out = tmp_path / "run"
    lock = RunLock(str(out)).acquire()
    try:
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             os.path.join(TOOLS, "train_net.py"), "--skip-test", "--config-file", CONFIG, *TINY,
             "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
            env=dict(os.environ, ATSS_DATA_DIR=DATA_DIR, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT),
        )
    finally:
        lock.release()
    assert proc.returncode != 0
    both = proc.stdout + proc.stderr
    assert both.count(f"train_net.py: error: OUTPUT_DIR {out} is in use by another training run: "
                      f"process {os.getpid()}") == 2, both[-3000:]
    assert time.time() - start < 200
    assert sorted(os.listdir(out)) == [LOCK_NAME], "the refused run wrote nothing"
