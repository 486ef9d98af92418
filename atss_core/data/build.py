"""Datasets and data loaders from the config.

``make_data_loader(cfg, is_train=True)`` is what ``tools/train_net.py`` uses: ONE
DataLoader over the concatenation of ``DATASETS.TRAIN`` that yields
``SOLVER.MAX_ITER - start_iter`` batches. ``make_data_loader(cfg, is_train=False)``
is what ``tools/test_net.py`` uses: a LIST of DataLoaders, one per
``DATASETS.TEST`` name, in that order; ``loader.dataset.name`` is the name.

A batch is ``(images, targets, indices)`` (see :class:`BatchCollator`): an
ImageList of normalised images, a tuple of BoxList targets (xyxy in resized
pixels, "labels" int64 in 1..C), and a tuple of dataset indices.
"""
import logging
import os

import cv2
from torch.utils.data import BatchSampler, DataLoader

from atss_core.config import ConfigError
from atss_core.config.paths_catalog import DatasetCatalog, data_root
from atss_core.utils.comm import get_rank, get_world_size

from . import datasets as D
from .collate_batch import BatchCollator, BBoxAugCollator
from .samplers import (
    DistributedSampler,
    GroupedBatchSampler,
    InferenceSampler,
    IterationBasedBatchSampler,
)
from .synthetic import ensure_catalog_dataset
from .transforms import build_transforms

logger = logging.getLogger(__name__)

_FACTORIES = {"COCODataset": D.COCODataset}


def _resolve(name):
    """Factory and constructor arguments of catalog dataset ``name``, with its
    files checked. The built-in synthetic datasets are generated on first use."""
    ensure_catalog_dataset(name)
    spec = DatasetCatalog.get(name)
    factory = spec["factory"]
    if factory not in _FACTORIES:
        raise ValueError(
            f"dataset {name!r} asks for factory {factory!r}; available: {', '.join(_FACTORIES)}"
        )
    args = dict(spec["args"])
    hint = (
        f"(data root: {os.path.abspath(data_root())}; set $ATSS_DATA_DIR to the folder that "
        "holds the data, or register the dataset's paths with DatasetCatalog.register or a "
        "JSON file named by $ATSS_DATASETS; see docs/DATA.md)"
    )
    if not os.path.isfile(args["ann_file"]):
        raise FileNotFoundError(
            f"dataset {name!r}: annotation file {args['ann_file']} not found {hint}"
        )
    if not os.path.isdir(args["root"]):
        raise FileNotFoundError(f"dataset {name!r}: image folder {args['root']} not found {hint}")
    return _FACTORIES[factory], args


def build_dataset(dataset_names, transforms, is_train=True):
    """Datasets of catalog names (``DatasetCatalog``).

    Every name is resolved and its files checked before any dataset is built,
    so a missing image folder or annotation file fails at once, naming the
    path and the dataset.

    Returns a list: for training ONE dataset, the concatenation of all names
    (images without usable boxes removed; unreadable images replaced); for
    testing one dataset per name, in order (every image kept; unreadable ones
    dropped from their batch).
    """
    if isinstance(dataset_names, str) or not isinstance(dataset_names, (list, tuple)):
        raise ConfigError(
            f"DATASETS.{'TRAIN' if is_train else 'TEST'} must be a list of dataset names, "
            f"got {dataset_names!r}"
        )
    if not dataset_names:
        raise ConfigError(
            f"DATASETS.{'TRAIN' if is_train else 'TEST'} is empty; name at least one dataset "
            f"(known: {', '.join(DatasetCatalog.names())})"
        )
    resolved = [(name, *_resolve(name)) for name in dataset_names]
    datasets = []
    for name, factory, args in resolved:
        dataset = factory(
            **args,
            remove_images_without_annotations=is_train,
            transforms=transforms,
            name=name,
            replace_unreadable=is_train,
        )
        if len(dataset) == 0:
            raise ValueError(
                f"dataset {name!r} ({args['ann_file']}) has no images"
                + (" with boxes wider and taller than 1 pixel to train on" if is_train else "")
            )
        datasets.append(dataset)
    if not is_train:
        return datasets
    return [datasets[0] if len(datasets) == 1 else D.ConcatDataset(datasets)]


def _aspect_groups(dataset):
    """0 for landscape (h < w), 1 for portrait and square images (h >= w)."""
    groups = []
    for i in range(len(dataset)):
        info = dataset.get_img_info(i)
        groups.append(int(info["height"] >= info["width"]))
    return groups


def _batch_sampler(dataset, sampler, aspect_grouping, images_per_gpu):
    if aspect_grouping:
        return GroupedBatchSampler(sampler, _aspect_groups(dataset), images_per_gpu)
    return BatchSampler(sampler, images_per_gpu, drop_last=False)


def _per_process(total, key, num_processes):
    if total % num_processes:
        raise ConfigError(
            f"{key} ({total}) is the batch size summed over all processes and must be "
            f"divisible by the number of processes ({num_processes}); set {key} to a "
            "multiple of it"
        )
    return total // num_processes


def _worker_init(worker_id):
    # Each worker's torch / numpy / random generators are seeded by the
    # DataLoader with base_seed + worker_id (base_seed drawn from the main
    # process's torch generator when iteration starts): distinct per worker and
    # reproducible under torch.manual_seed. OpenCV threads would oversubscribe
    # the cores that the workers already use.
    cv2.setNumThreads(1)


class _SkipEmptyDataLoader(DataLoader):
    """Test DataLoader that leaves out batches whose images were all
    unreadable (collated to None)."""

    def __iter__(self):
        for batch in super().__iter__():
            if batch is not None:
                yield batch


def make_data_loader(cfg, is_train=True, is_distributed=False, start_iter=0):
    """DataLoader(s) of ``DATASETS.TRAIN`` (``is_train``) or ``DATASETS.TEST``.

    Training: one DataLoader over the concatenated training sets, shuffled by
    :class:`DistributedSampler` (sharded over processes when
    ``is_distributed``), batched ``SOLVER.IMS_PER_BATCH / world_size`` per
    process (aspect-ratio grouped when ``DATALOADER.ASPECT_RATIO_GROUPING``),
    running until iteration ``SOLVER.MAX_ITER``; with ``start_iter`` it yields
    the batches of iterations ``start_iter`` .. ``MAX_ITER - 1`` of the same
    sequence. ``len()`` is ``SOLVER.MAX_ITER``.

    Testing: a list with one DataLoader per ``DATASETS.TEST`` name, each
    process reading a contiguous ordered shard (:class:`InferenceSampler`),
    ``TEST.IMS_PER_BATCH / world_size`` images per batch;
    ``loader.dataset.name`` is the dataset name. With
    ``TEST.BBOX_AUG.ENABLED`` the images are not transformed: a batch is
    ``(list of [H, W, 3] uint8 BGR arrays, targets in original pixels,
    indices)`` for the test-time augmentation to resize itself.
    """
    num_processes = get_world_size() if is_distributed else 1
    rank = get_rank() if is_distributed else 0
    if is_train:
        images_per_gpu = _per_process(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", num_processes)
        names = cfg.DATASETS.TRAIN
    else:
        images_per_gpu = _per_process(cfg.TEST.IMS_PER_BATCH, "TEST.IMS_PER_BATCH", num_processes)
        names = cfg.DATASETS.TEST
    if cfg.DATALOADER.NUM_WORKERS < 0:
        raise ConfigError(
            f"DATALOADER.NUM_WORKERS must be >= 0, got {cfg.DATALOADER.NUM_WORKERS}"
        )
    bbox_aug = not is_train and cfg.TEST.BBOX_AUG.ENABLED
    transforms = None if bbox_aug else build_transforms(cfg, is_train)
    collator = BBoxAugCollator() if bbox_aug else BatchCollator(cfg.DATALOADER.SIZE_DIVISIBILITY)
    datasets = build_dataset(names, transforms, is_train)
    loader_args = dict(
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=collator,
        worker_init_fn=_worker_init if cfg.DATALOADER.NUM_WORKERS > 0 else None,
    )

    if is_train:
        dataset = datasets[0]
        sampler = DistributedSampler(len(dataset), num_processes, rank, shuffle=True)
        batch_sampler = IterationBasedBatchSampler(
            _batch_sampler(dataset, sampler, cfg.DATALOADER.ASPECT_RATIO_GROUPING, images_per_gpu),
            cfg.SOLVER.MAX_ITER,
            start_iter,
        )
        logger.info(
            "training data: %s, %d images, %d per process and iteration, iterations %d..%d",
            dataset.name, len(dataset), images_per_gpu, start_iter, cfg.SOLVER.MAX_ITER,
        )
        return DataLoader(dataset, batch_sampler=batch_sampler, **loader_args)

    loaders = []
    for dataset in datasets:
        sampler = InferenceSampler(len(dataset), num_processes, rank)
        batch_sampler = _batch_sampler(
            dataset, sampler, cfg.DATALOADER.ASPECT_RATIO_GROUPING, images_per_gpu
        )
        logger.info(
            "test data: %s, %d images (this process: %d..%d)",
            dataset.name, len(dataset), sampler.begin, sampler.end - 1,
        )
        loaders.append(_SkipEmptyDataLoader(dataset, batch_sampler=batch_sampler, **loader_args))
    return loaders
