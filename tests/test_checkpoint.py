"""Checkpoint loading of every layout, saving/resuming, and the clear errors."""
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import load_cfg

from atss_core.config import cfg as default_cfg
from atss_core.modeling.detector import build_detection_model
from atss_core.utils.checkpoint import CheckpointError, DetectronCheckpointer

TINY = ["MODEL.BACKBONE.CONV_BODY", "R-18-FPN-RETINANET", "MODEL.RESNETS.TRANS_FUNC", "BasicBlockWithFixedBatchNorm",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "64",
        "MODEL.ATSS.NUM_CONVS", "1", "MODEL.ATSS.NUM_CLASSES", "5"]


def tiny_cfg(extra=()):
    return load_cfg("atss_R_50_FPN_1x", TINY + list(extra))


def tiny_model(extra=()):
    cfg = tiny_cfg(extra)
    return cfg, build_detection_model(cfg)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.dtype.is_floating_point:
                t.copy_(torch.randn(t.shape, generator=g))


def assert_same_state(a, b, prefix=""):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if k.startswith(prefix):
            assert torch.equal(sa[k], sb[k]), k


def test_released_layout_with_module_prefix(tmp_path):
    cfg, src = tiny_model()
    randomize(src, 0)
    path = tmp_path / "released.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    _, dst = tiny_model()
    assert DetectronCheckpointer(cfg, dst).load(str(path)) == {}
    assert_same_state(src, dst)


def test_own_checkpoint_round_trip_with_optimizer_and_resume(tmp_path):
    cfg, model = tiny_model()
    randomize(model, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    ckpt = DetectronCheckpointer(cfg, model, opt, sched, save_dir=str(tmp_path))
    path = ckpt.save("model_0000007", iteration=7)
    assert os.path.basename(path) == "model_0000007.pth"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000007.pth"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]

    _, model2 = tiny_model()
    opt2 = torch.optim.SGD([p for p in model2.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 10)
    extra = DetectronCheckpointer(cfg, model2, opt2, sched2, save_dir=str(tmp_path)).load("ignored-when-resuming")
    assert extra == {"iteration": 7}
    assert_same_state(model, model2)
    assert sched2.last_epoch == 1
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def torchvision_resnet18_state(model):
    """A torchvision-layout state dict holding the body weights of ``model``."""
    state = {}
    for k, v in model.backbone.body.state_dict().items():
        name = k[len("stem."):] if k.startswith("stem.") else k
        if name.endswith("running_var"):
            v = v - 1e-5
        state[name] = v.clone()
        if name.endswith("running_var"):
            state[name[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    return state


def test_torchvision_layout_loads_the_body_only(tmp_path):
    cfg, src = tiny_model()
    randomize(src, 2)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_resnet18_state(src), path)
    _, dst = tiny_model()
    head_before = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("rpn.")}
    DetectronCheckpointer(cfg, dst).load(str(path))
    for k, v in src.backbone.body.state_dict().items():
        assert torch.allclose(dst.backbone.body.state_dict()[k], v, atol=1e-6), k
    for k, v in head_before.items():
        assert torch.equal(dst.state_dict()[k], v)


def c2_blobs_for(model):
    """Caffe2 blob names for the body of a bottleneck ResNet ``model``."""
    body = model.backbone.body.state_dict()
    blobs = {"conv1_w": body["stem.conv1.weight"].numpy(),
             "res_conv1_bn_s": body["stem.bn1.weight"].numpy(), "res_conv1_bn_b": body["stem.bn1.bias"].numpy(),
             "fc1000_w": np.zeros((1000, 2048), np.float32), "conv1_w_momentum": np.zeros(1, np.float32)}
    convs = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "downsample.0": "branch1"}
    bns = {"bn1": "branch2a", "bn2": "branch2b", "bn3": "branch2c", "downsample.1": "branch1"}
    for k, v in body.items():
        if not k.startswith("layer") or "running" in k or ".offset." in k:
            continue
        layer, block, rest = k.split(".", 2)
        stage = int(layer[len("layer"):]) + 1
        module, leaf = rest.rsplit(".", 1)
        module = module.replace("conv2.conv", "conv2")
        if module in convs:
            name = f"res{stage}_{block}_{convs[module]}_w"
        else:
            name = f"res{stage}_{block}_{bns[module]}_bn_{'s' if leaf == 'weight' else 'b'}"
        blobs[name] = v.numpy()
    return blobs


@pytest.mark.parametrize("dcn", [False, True])
def test_caffe2_pkl_layout_maps_onto_the_body(tmp_path, dcn):
    extra = ["MODEL.RESNETS.STAGE_WITH_DCN", "(False, True, True, True)", "MODEL.RESNETS.WITH_MODULATED_DCN", "True"] if dcn else []
    cfg = load_cfg("atss_R_50_FPN_1x", extra)
    src = build_detection_model(cfg)
    randomize(src, 3)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": c2_blobs_for(src)}, f)
    dst = build_detection_model(cfg)
    DetectronCheckpointer(cfg, dst).load(str(path))
    body = dst.backbone.body.state_dict()
    for k, v in src.backbone.body.state_dict().items():
        if "running" in k or ".offset." in k:
            continue
        assert torch.equal(body[k], v), k
    assert float(body["layer1.0.bn1.running_var"].sum()) == 64  # folded statistics stay neutral


def test_catalog_name_resolves_to_local_file(tmp_path, monkeypatch):
    cfg = load_cfg("atss_R_50_FPN_1x")
    model = build_detection_model(cfg)
    monkeypatch.setenv("ATSS_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        DetectronCheckpointer(cfg, model).load(cfg.MODEL.WEIGHT, use_latest=False)
    assert str(tmp_path / "R-50.pkl") in str(err.value) and "Nothing is downloaded" in str(err.value)
    src = build_detection_model(cfg)
    randomize(src, 4)
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump({"blobs": c2_blobs_for(src)}, f)
    DetectronCheckpointer(cfg, model).load(cfg.MODEL.WEIGHT)
    assert torch.equal(model.backbone.body.stem.conv1.weight, src.backbone.body.stem.conv1.weight)


def test_mismatched_checkpoint_lists_what_did_not_match(tmp_path):
    cfg, src = tiny_model()
    state = src.state_dict()
    state.pop("rpn.head.centerness.bias")
    state["rpn.head.extra.weight"] = torch.zeros(1)
    state["rpn.head.cls_logits.weight"] = torch.zeros(3, 64, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    _, dst = tiny_model()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        DetectronCheckpointer(cfg, dst).load(str(path))
    msg = str(err.value)
    assert "rpn.head.centerness.bias" in msg and "rpn.head.extra.weight" in msg
    assert "rpn.head.cls_logits.weight: checkpoint (3, 64, 3, 3) vs model (4, 64, 3, 3)" in msg
    for k, v in dst.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k])


def test_wrong_backbone_weights_are_refused(tmp_path):
    cfg = load_cfg("atss_R_50_FPN_1x")
    src = build_detection_model(cfg)
    blobs = c2_blobs_for(src)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    cfg101 = load_cfg("atss_R_101_FPN_1x")
    with pytest.raises(CheckpointError) as err:
        DetectronCheckpointer(cfg101, build_detection_model(cfg101)).load(str(path))
    assert "body tensors the weights lack" in str(err.value) and "layer3.10.conv1.weight" in str(err.value)


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_not_a_checkpoint(tmp_path, content):
    cfg, model = tiny_model()
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.pth"):
        DetectronCheckpointer(cfg, model).load(str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        DetectronCheckpointer(cfg, model).load(str(tmp_path / "missing.pth"))
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="list"):
        DetectronCheckpointer(cfg, model).load(str(path))


def test_no_weight_keeps_initialisation():
    model = build_detection_model(tiny_cfg())
    assert DetectronCheckpointer(default_cfg, model).load("") == {}


def _py2_pickle(blobs):
    """``{"blobs": blobs}`` as Python 2 + numpy 1.x wrote Detectron's .pkl files
    (protocol 2, numpy.core.multiarray names, byte strings as py2 ``str``)."""
    import struct

    out = [b"\x80\x02}U\x05blobs}("]  # PROTO 2, EMPTY_DICT, 'blobs', EMPTY_DICT, MARK
    for name, array in blobs.items():
        array = np.ascontiguousarray(array)
        kind = array.dtype.str[1:].encode()  # 'f4'
        shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in array.shape) + b"t"
        data = array.tobytes()
        out += [
            b"U" + bytes([len(name)]) + name.encode(),
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R",
            b"(K\x01" + shape,
            b"cnumpy\ndtype\nU" + bytes([len(kind)]) + kind + b"K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
            b"\x89T" + struct.pack("<I", len(data)) + data + b"tb",
        ]
    out.append(b"us.")  # SETITEMS, SETITEM, STOP
    return b"".join(out)


def test_python2_detectron_pkl_loads(tmp_path):
    """A .pkl as Detectron wrote them (Python 2, numpy 1.x names, latin1 byte
    strings) loads through the allow-list unpickler."""
    cfg = load_cfg("atss_R_50_FPN_1x")
    src = build_detection_model(cfg)
    randomize(src, 5)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(_py2_pickle(c2_blobs_for(src)))
    dst = build_detection_model(cfg)
    checkpointer = DetectronCheckpointer(cfg, dst)
    checkpointer.load(str(path))
    assert checkpointer.loaded_layout == "caffe2"
    body = dst.backbone.body.state_dict()
    for k, v in src.backbone.body.state_dict().items():
        if "running" not in k:
            assert torch.equal(body[k], v), k


def test_protocol2_python3_pkl_loads_and_layout_is_recorded(tmp_path):
    cfg = load_cfg("atss_R_50_FPN_1x")
    src = build_detection_model(cfg)
    randomize(src, 6)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": c2_blobs_for(src)}, f, protocol=2)
    dst = build_detection_model(cfg)
    checkpointer = DetectronCheckpointer(cfg, dst)
    checkpointer.load(str(path))
    assert checkpointer.loaded_layout == "caffe2"
    assert torch.equal(dst.backbone.body.layer4[2].conv3.weight, src.backbone.body.layer4[2].conv3.weight)
    checkpointer.load("")
    assert checkpointer.loaded_layout is None
