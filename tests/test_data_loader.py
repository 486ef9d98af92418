"""make_data_loader end to end: coco128 (skipped where absent) and hand-made data."""
import pytest
import torch

from atss_core.config import ConfigError, cfg as default_cfg
from atss_core.config.paths_catalog import DatasetCatalog
from atss_core.data import make_data_loader
from atss_core.data.datasets import COCODataset
from atss_core.data.transforms import get_size

from test_data_coco import SHARED_DATA, make_dataset, needs_coco128


def small_cfg(*opts):
    c = default_cfg.clone()
    c.merge_from_list([
        "DATASETS.TRAIN", ("coco128_train",),
        "DATASETS.TEST", ("coco128_val",),
        "INPUT.MIN_SIZE_TRAIN", (192, 224),
        "INPUT.MAX_SIZE_TRAIN", 320,
        "INPUT.MIN_SIZE_TEST", 160,
        "INPUT.MAX_SIZE_TEST", 256,
        "SOLVER.IMS_PER_BATCH", 4,
        "SOLVER.MAX_ITER", 6,
        "TEST.IMS_PER_BATCH", 8,
        "DATALOADER.SIZE_DIVISIBILITY", 32,
        "DATALOADER.NUM_WORKERS", 0,
        *opts,
    ])
    return c


@pytest.fixture
def coco128_root(monkeypatch):
    monkeypatch.setenv("ATSS_DATA_DIR", SHARED_DATA)
    monkeypatch.delenv("ATSS_DATASETS", raising=False)


def _as_lists(loader):
    return [(b[0].tensors.clone(), [t.bbox.clone() for t in b[1]], b[2]) for b in loader]


@needs_coco128
@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_on_coco128(coco128_root, workers):
    c = small_cfg("DATALOADER.NUM_WORKERS", workers)
    torch.manual_seed(0)
    loader = make_data_loader(c, is_train=True)
    assert isinstance(loader.dataset, COCODataset) and loader.dataset.name == "coco128_train"
    assert len(loader) == 6
    batches = _as_lists(loader)
    assert len(batches) == 6
    for images, boxes, indices in batches:
        assert images.dtype == torch.float32 and images.shape[0] == 4 == len(indices)
        assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
        assert max(images.shape[2:]) <= 320
        infos = [loader.dataset.get_img_info(i) for i in indices]
        portrait = {info["height"] >= info["width"] for info in infos}
        assert len(portrait) == 1  # aspect-ratio grouping
    images, targets, indices = next(iter(loader))
    for (h, w), t, i in zip(images.image_sizes, targets, indices):
        labels = t.get_field("labels")
        assert labels.dtype == torch.int64 and ((labels >= 1) & (labels <= 80)).all()
        assert t.size == (w, h)
        info = loader.dataset.get_img_info(i)
        assert (h, w) in [get_size((info["width"], info["height"]), s, 320) for s in (192, 224)]
        # clipped at w - 1 in the original pixels, then scaled (and maybe flipped)
        assert (t.bbox >= -1).all() and (t.bbox[:, 2] <= w).all() and (t.bbox[:, 3] <= h).all()
        assert (t.bbox[:, 2:] > t.bbox[:, :2]).all()
    torch.manual_seed(0)
    again = _as_lists(make_data_loader(c, is_train=True))
    for (a, ab, ai), (b, bb, bi) in zip(batches, again):
        assert ai == bi and torch.equal(a, b)  # same order, same scales and flips
        assert all(torch.equal(x, y) for x, y in zip(ab, bb))


@needs_coco128
def test_train_loader_resumes_at_start_iter(coco128_root):
    c = small_cfg("SOLVER.MAX_ITER", 70, "INPUT.MIN_SIZE_TRAIN", (32,), "INPUT.MAX_SIZE_TRAIN", 64)
    full = [b[2] for b in make_data_loader(c, is_train=True)]
    assert len(full) == 70  # more than an epoch of 126 images / 4
    resumed = make_data_loader(c, is_train=True, start_iter=40)
    assert len(resumed) == 70
    assert [b[2] for b in resumed] == full[40:]
    epoch = [i for b in full for i in b][:126]  # epoch 0's batches come first
    assert sorted(epoch) == list(range(126))


@needs_coco128
def test_train_loader_per_process_batch_and_sharding(coco128_root, monkeypatch):
    import atss_core.data.build as data_build

    c = small_cfg("SOLVER.MAX_ITER", 3, "INPUT.MIN_SIZE_TRAIN", (32,), "INPUT.MAX_SIZE_TRAIN", 64,
                  "DATALOADER.ASPECT_RATIO_GROUPING", False)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(data_build, "get_world_size", lambda: 2)
        monkeypatch.setattr(data_build, "get_rank", lambda rank=rank: rank)
        batches = [b[2] for b in make_data_loader(c, is_train=True, is_distributed=True)]
        assert [len(b) for b in batches] == [2, 2, 2]
        seen.append({i for b in batches for i in b})
    assert not seen[0] & seen[1]  # the two processes read different images
    monkeypatch.setattr(data_build, "get_world_size", lambda: 3)
    with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH \(4\).*processes \(3\)"):
        make_data_loader(c, is_train=True, is_distributed=True)


@needs_coco128
@pytest.mark.parametrize("workers", [0, 2])
def test_test_loader_on_coco128(coco128_root, workers):
    c = small_cfg("DATALOADER.NUM_WORKERS", workers)
    loaders = make_data_loader(c, is_train=False)
    assert isinstance(loaders, list) and len(loaders) == 1
    loader = loaders[0]
    assert loader.dataset.name == "coco128_val"
    indices = []
    for images, targets, idx in loader:
        assert len(images) == len(targets) == len(idx) <= 8
        for (h, w), t, i in zip(images.image_sizes, targets, idx):
            info = loader.dataset.get_img_info(i)
            assert t.size == (w, h) == get_size((info["width"], info["height"]), 160, 256)[::-1]
        indices.extend(idx)
    assert sorted(indices) == list(range(128))


@needs_coco128
def test_test_loader_shards_cover_the_dataset_in_order(coco128_root, monkeypatch):
    import atss_core.data.build as data_build

    c = small_cfg("TEST.IMS_PER_BATCH", 3, "DATASETS.TEST", ("coco128_val", "coco128_train"),
                  "INPUT.MIN_SIZE_TEST", 32, "INPUT.MAX_SIZE_TEST", 64)
    monkeypatch.setattr(data_build, "get_world_size", lambda: 3)
    per_dataset = {"coco128_val": [], "coco128_train": []}
    for rank in range(3):
        monkeypatch.setattr(data_build, "get_rank", lambda rank=rank: rank)
        loaders = make_data_loader(c, is_train=False, is_distributed=True)
        assert [l.dataset.name for l in loaders] == ["coco128_val", "coco128_train"]
        for loader in loaders:
            shard = sorted(i for _, _, idx in loader for i in idx)
            per_dataset[loader.dataset.name].append(shard)
    for name, shards in per_dataset.items():
        assert [i for s in shards for i in s] == list(range(128)), name


@needs_coco128
def test_bbox_aug_loader_gives_raw_images(coco128_root):
    c = small_cfg("TEST.BBOX_AUG.ENABLED", True, "TEST.IMS_PER_BATCH", 2)
    loader = make_data_loader(c, is_train=False)[0]
    images, targets, indices = next(iter(loader))
    info = loader.dataset.get_img_info(indices[0])
    assert isinstance(images, list) and images[0].shape == (info["height"], info["width"], 3)
    assert targets[0].size == (info["width"], info["height"])


def test_test_loader_skips_unreadable_images(tmp_path, monkeypatch):
    ann_file, root = make_dataset(tmp_path)
    monkeypatch.setattr(DatasetCatalog, "_registered", {})
    DatasetCatalog.register("hand", root, ann_file)
    c = small_cfg("DATASETS.TEST", ("hand",), "TEST.IMS_PER_BATCH", 1,
                  "DATALOADER.ASPECT_RATIO_GROUPING", False, "MODEL.ATSS.NUM_CLASSES", 3)
    (loader,) = make_data_loader(c, is_train=False)
    indices = [idx for _, _, idx in loader]
    assert indices == [(0,), (1,), (2,), (3,)]  # index 4 (5.png) is unreadable: no batch
    c = small_cfg("DATASETS.TEST", ("hand",), "TEST.IMS_PER_BATCH", 2,
                  "DATALOADER.ASPECT_RATIO_GROUPING", False, "MODEL.ATSS.NUM_CLASSES", 3)
    (loader,) = make_data_loader(c, is_train=False)
    assert [idx for _, _, idx in loader] == [(0, 1), (2, 3)]


def test_config_errors():
    c = small_cfg("DATASETS.TEST", ())
    with pytest.raises(ConfigError, match="DATASETS.TEST is empty"):
        make_data_loader(c, is_train=False)
    c = small_cfg("DATALOADER.NUM_WORKERS", -1)
    with pytest.raises(ConfigError, match="NUM_WORKERS"):
        make_data_loader(c, is_train=True)


@needs_coco128
def test_train_loader_concatenates_datasets(coco128_root):
    c = small_cfg("DATASETS.TRAIN", ("coco128_train", "coco128_val"), "SOLVER.MAX_ITER", 66,
                  "INPUT.MIN_SIZE_TRAIN", (32,), "INPUT.MAX_SIZE_TRAIN", 64)
    loader = make_data_loader(c, is_train=True)
    assert loader.dataset.name == "coco128_train+coco128_val" and len(loader.dataset) == 254
    indices = [i for _, _, idx in loader for i in idx]
    assert sorted(indices[:254]) == list(range(254))  # one epoch over both sets
    for images, targets, idx in [next(iter(loader))]:
        for t, i in zip(targets, idx):
            info = loader.dataset.get_img_info(i)
            assert t.size == get_size((info["width"], info["height"]), 32, 64)[::-1]
