"""Where datasets and pretrained weights live on disk.

Nothing is ever downloaded at run time: every name resolves to a local path.

Datasets
    ``DatasetCatalog.get(name)`` maps a ``DATASETS.TRAIN`` / ``DATASETS.TEST`` name
    to its image folder and annotation file under the data root, which is
    ``$ATSS_DATA_DIR`` when set and ``datasets/`` (relative to the working
    directory) otherwise. For example ``coco128_val`` is
    ``$ATSS_DATA_DIR/coco128/val2017`` with
    ``$ATSS_DATA_DIR/coco128/annotations/instances_val2017.json``.

    Your own COCO-format dataset, without editing code: either call
    ``DatasetCatalog.register("my_train", img_dir, ann_file)`` in your script, or
    list it in a JSON file named by ``$ATSS_DATASETS`` (several files separated
    by ``os.pathsep``)::

        {"my_train": {"img_dir": "/data/my/images", "ann_file": "/data/my/train.json"}}

    Relative paths in the catalog are relative to the data root.

Pretrained weights
    ``ModelCatalog.get("ImageNetPretrained/MSRA/R-50")`` (what a config's
    ``catalog://ImageNetPretrained/MSRA/R-50`` names) is a file in the weights
    folder, ``$ATSS_WEIGHTS_DIR`` when set, else ``~/.cache/atss/weights``. See
    INSTALL.md for where to get each file.
"""
import os

from atss_core.utils.io import read_json

from .config_node import ConfigError


class DatasetNotFoundError(KeyError):
    """A dataset name that is neither built in nor registered."""

    def __str__(self):
        return self.args[0]


class UnknownWeightsError(ConfigError, KeyError):
    """A ``catalog://`` name the weights catalog does not know (a
    :class:`~atss_core.config.ConfigError`; a KeyError for older callers)."""

    def __str__(self):
        return self.args[0]


def data_root():
    return os.environ.get("ATSS_DATA_DIR", "datasets")


class DatasetCatalog:
    """Registry of named datasets: name -> {"factory", "img_dir", "ann_file"}."""

    DATASETS = {
        "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
        "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
        "coco_2017_test_dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
        "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
        "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
        "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
        "coco_2014_valminusminival": (
            "coco/val2014", "coco/annotations/instances_valminusminival2014.json"),
        "coco128_train": ("coco128/train2017", "coco128/annotations/instances_train2017.json"),
        "coco128_val": ("coco128/val2017", "coco128/annotations/instances_val2017.json"),
        # The built-in synthetic dataset (atss_core/data/synthetic.py).
        "shapes_train": ("shapes/train", "shapes/annotations/instances_train.json"),
        "shapes_val": ("shapes/val", "shapes/annotations/instances_val.json"),
    }
    _registered = {}

    @classmethod
    def register(cls, name, img_dir, ann_file, factory="COCODataset"):
        """Register a COCO-format dataset under ``name`` (absolute paths, or paths
        relative to the data root)."""
        cls._registered[name] = {"factory": factory, "img_dir": img_dir, "ann_file": ann_file}

    @classmethod
    def _from_env_files(cls):
        entries = {}
        for path in filter(None, os.environ.get("ATSS_DATASETS", "").split(os.pathsep)):
            data = read_json(path, f"dataset list {path} named by $ATSS_DATASETS", DatasetNotFoundError)
            for name, spec in data.items():
                if not {"img_dir", "ann_file"} <= set(spec):
                    raise DatasetNotFoundError(
                        f"dataset {name} in {path} needs both 'img_dir' and 'ann_file'"
                    )
                entries[name] = {"factory": spec.get("factory", "COCODataset"), **spec}
        return entries

    @classmethod
    def names(cls):
        return sorted(set(cls.DATASETS) | set(cls._registered) | set(cls._from_env_files()))

    @classmethod
    def get(cls, name):
        """Returns ``{"factory": class name, "args": {"root", "ann_file"}}`` with
        paths joined to the data root."""
        spec = cls._registered.get(name) or cls._from_env_files().get(name)
        if spec is None and name in cls.DATASETS:
            img_dir, ann_file = cls.DATASETS[name]
            spec = {"factory": "COCODataset", "img_dir": img_dir, "ann_file": ann_file}
        if spec is None:
            raise DatasetNotFoundError(
                f"unknown dataset {name!r}; known datasets: {', '.join(cls.names())}. "
                "Register your own with DatasetCatalog.register() or a JSON file named "
                "by $ATSS_DATASETS (see atss_core/config/paths_catalog.py)"
            )
        root = data_root()
        return {
            "factory": spec["factory"],
            "args": {
                "root": os.path.join(root, spec["img_dir"]),
                "ann_file": os.path.join(root, spec["ann_file"]),
            },
        }


def weights_dir():
    return os.environ.get(
        "ATSS_WEIGHTS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "atss", "weights")
    )


class ModelCatalog:
    """``catalog://`` names of pretrained weights -> file names in :func:`weights_dir`.

    The files are the ones the reference framework downloads (Detectron's Caffe2
    ``.pkl`` files); a torchvision-layout ``.pth`` of the same backbone saved under
    the same name with ``.pth`` works too.
    """

    FILES = {
        "ImageNetPretrained/MSRA/R-50": "R-50.pkl",
        "ImageNetPretrained/MSRA/R-50-GN": "R-50-GN.pkl",
        "ImageNetPretrained/MSRA/R-101": "R-101.pkl",
        "ImageNetPretrained/MSRA/R-101-GN": "R-101-GN.pkl",
        "ImageNetPretrained/FAIR/20171220/X-101-32x8d": "X-101-32x8d.pkl",
        "ImageNetPretrained/FAIR/20171220/X-101-64x4d": "X-101-64x4d.pkl",
    }
    # Where the reference got each file (for the user to fetch by hand).
    SOURCES = {
        "R-50.pkl": "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl",
        "R-101.pkl": "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-101.pkl",
        "X-101-32x8d.pkl": "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/"
                           "20171220/X-101-32x8d.pkl",
        "X-101-64x4d.pkl": "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/"
                           "20171220/X-101-64x4d.pkl",
    }

    @classmethod
    def check_name(cls, name, key="MODEL.WEIGHT"):
        """Raise :class:`UnknownWeightsError` (naming the config ``key``) when
        ``name`` (without ``catalog://``) is not in the catalog."""
        if name not in cls.FILES:
            raise UnknownWeightsError(
                f"{key} catalog://{name} is not a known weights name; known: "
                + ", ".join("catalog://" + k for k in sorted(cls.FILES))
                + ". Fix the name, or set " + key + " to a file path (or '' to train from scratch)."
            )

    @classmethod
    def get(cls, name):
        """Local path of a catalog name; raises :class:`UnknownWeightsError` for
        an unknown name and FileNotFoundError saying where to put the file when
        it is absent."""
        cls.check_name(name)
        filename = cls.FILES[name]
        folder = weights_dir()
        stem = os.path.splitext(filename)[0]
        for candidate in (filename, stem + ".pth"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
        where = cls.SOURCES.get(filename, "the Detectron model zoo")
        raise FileNotFoundError(
            f"pretrained weights catalog://{name} not found: expected {os.path.join(folder, filename)} "
            f"(or {stem}.pth in the torchvision layout). Nothing is downloaded at run time: "
            f"download {where} yourself and put it there, or set $ATSS_WEIGHTS_DIR to the "
            "folder that holds it, or set MODEL.WEIGHT to a file path (or '' to train from scratch)."
        )
