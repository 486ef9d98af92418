"""Datasets and data loaders from the config.

``make_data_loader(cfg, is_train=True)`` is what ``tools/train_net.py`` uses: ONE
DataLoader over the concatenation of ``DATASETS.TRAIN`` that yields
``SOLVER.MAX_ITER - start_iter`` batches. ``make_data_loader(cfg, is_train=False)``
is what ``tools/test_net.py`` uses: a LIST of DataLoaders, one per
``DATASETS.TEST`` name, in that order; ``loader.dataset.name`` is the name.

A batch is ``(images, targets, indices)`` (see :class:`BatchCollator`): an
ImageList of normalised images, a tuple of BoxList targets (xyxy in resized
pixels, "labels" int64 in 1..C), and a tuple of dataset indices.

Checks made before the first iteration: every dataset's categories + 1 (the
background) must equal ``MODEL.ATSS.NUM_CLASSES`` (:func:`check_num_classes`),
concatenated training sets must list the same categories, and a dataset none
of whose image files exist is an error. The images left out of training are
summarised in the log and listed in ``OUTPUT_DIR/skipped_images.txt``
(:data:`SKIPPED_IMAGES_FILE`).
"""
import logging
import os

import cv2
from torch.utils.data import BatchSampler, DataLoader

from atss_core.config import ConfigError
from atss_core.config.paths_catalog import DatasetCatalog, data_root
from atss_core.utils.comm import get_rank, get_world_size
from atss_core.utils.io import atomic_write_text

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

# Written in OUTPUT_DIR by make_data_loader(is_train=True): the training images
# left out, one a line (dataset, image id, path, reason).
SKIPPED_IMAGES_FILE = "skipped_images.txt"
_NUM_CLASSES_KEY = "MODEL.ATSS.NUM_CLASSES"


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
    path and the dataset. A dataset none of whose image files is in its
    folder is a FileNotFoundError; concatenated training sets must list the
    same categories (ConfigError).

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
        _check_some_images_exist(dataset)
        if len(dataset) == 0:
            skipped = getattr(dataset, "skipped", ())
            reasons = sorted({reason for _, _, reason in skipped})
            raise ValueError(
                f"dataset {name!r} ({args['ann_file']}) has no images"
                + (" with boxes wider and taller than 1 pixel to train on" if is_train else "")
                + (f" (left out: {', '.join(reasons)}; see the warning above)" if reasons else "")
            )
        datasets.append(dataset)
    if not is_train:
        return datasets
    _check_same_categories(datasets)
    return [datasets[0] if len(datasets) == 1 else D.ConcatDataset(datasets)]


def _parts(dataset):
    """The datasets making up ``dataset`` (the parts of a ConcatDataset)."""
    return list(getattr(dataset, "datasets", [dataset]))


def _check_some_images_exist(dataset):
    missing = getattr(dataset, "missing_ids", ())
    total = getattr(dataset, "num_images_in_file", 0)
    if total and len(missing) == total:
        example = dataset.coco.imgs[min(missing)]["file_name"]
        raise FileNotFoundError(
            f"dataset {dataset.name!r}: none of the {total} images of {dataset.ann_file} is in "
            f"the image folder {dataset.root} (for example {example}); is that the folder of "
            "this annotation file?"
        )


def _category_list(dataset):
    return [(json_id, dataset.categories[contiguous])
            for contiguous, json_id in sorted(dataset.contiguous_category_id_to_json_id.items())]


def _check_same_categories(datasets):
    """Concatenated training sets must give label k the same meaning."""
    first = datasets[0]
    for other in datasets[1:]:
        if _category_list(other) != _category_list(first):
            raise ConfigError(
                f"DATASETS.TRAIN concatenates {first.name!r} ({len(first.categories)} categories, "
                f"{first.ann_file}) and {other.name!r} ({len(other.categories)} categories, "
                f"{other.ann_file}), whose category lists (ids, names, order) differ: their "
                "labels would mean different classes. Train on datasets with the same categories"
            )


def check_num_classes(dataset, num_classes, key=_NUM_CLASSES_KEY):
    """Raise :class:`ConfigError` unless ``num_classes`` (``MODEL.ATSS.NUM_CLASSES``,
    which counts the background) is the number of categories of ``dataset``
    (each part of a concatenation) + 1: a model with fewer classes never learns
    or predicts some categories, one with more maps labels to categories the
    dataset does not have."""
    for part in _parts(dataset):
        categories = len(part.categories)
        if num_classes != categories + 1:
            raise ConfigError(
                f"{key} is {num_classes} but dataset {part.name!r} ({part.ann_file}) has "
                f"{categories} categories: set {key} {categories + 1} (its {categories} "
                "categories plus the background), or use the dataset the model is meant for"
            )


def _write_skipped_list(dataset, output_dir, write):
    """Write the training images left out (``dataset.skipped`` of each part)
    to ``output_dir/SKIPPED_IMAGES_FILE`` (only ``write``: the main process)
    and point the datasets at it, so that images found unreadable while
    training are appended (by the loader's processes). Without skipped
    images no file is written, and one left by an earlier run is removed."""
    if not output_dir:
        return None
    path = os.path.join(output_dir, SKIPPED_IMAGES_FILE)
    skipped = [(part.name, *entry) for part in _parts(dataset)
               for entry in getattr(part, "skipped", ())]
    if write:
        if skipped:
            lines = ["# training images left out: dataset, image id, path, reason "
                     "(images found unreadable while training are appended)"]
            lines += ["\t".join(str(v) for v in row) for row in skipped]
            atomic_write_text("\n".join(lines) + "\n", path)
            logger.warning("%d training images left out; the list is in %s", len(skipped), path)
        elif os.path.exists(path):
            os.remove(path)
    for part in _parts(dataset):
        part.skip_log = path
    return path


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

    Checked once the annotation files are loaded, before any image is read:
    ``MODEL.ATSS.NUM_CLASSES`` must be the
    categories + 1 of the training set (:func:`check_num_classes`,
    ConfigError); for a test set a model with fewer classes is an error and
    one with more a warning (the evaluation refuses detections of a class the
    dataset lacks). Training: the images left out are listed in
    ``OUTPUT_DIR/skipped_images.txt`` (when ``OUTPUT_DIR`` is set; written
    by rank 0), and the loader's processes append the images they find
    unreadable.
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

    num_classes = cfg.MODEL.ATSS.NUM_CLASSES
    if is_train:
        dataset = datasets[0]
        check_num_classes(dataset, num_classes)
        _write_skipped_list(dataset, cfg.OUTPUT_DIR, write=rank == 0)
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

    for dataset in datasets:
        check_num_classes(dataset, num_classes)
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
