"""Datasets by name, and the per-rank sharding every training run uses.

A loader is `load(data_dir, seed, **options) -> DataBundle`; register it in DATASETS (the
command line's --dataset help and check are made from it).
"""
import importlib
from dataclasses import dataclass

from torch.utils.data import Dataset

from toolkit.data.errors import DataError
from toolkit.data.sharding import shard_loader, steps_per_epoch


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    val: Dataset = None  # held out of the training files; None where a data set has none


def _loader(name, module, function="load", *, about):
    """A loader that imports toolkit.data.<module> when its dataset is first asked for, so
    that an optional dependency (Pillow for imagefolder) matters only to who uses it.
    `about` describes the data set in --help."""
    def load(data_dir=None, seed=0, **options):
        try:
            found = importlib.import_module(f"toolkit.data.{module}")
        except ModuleNotFoundError as exc:
            if exc.name.startswith("toolkit."):
                raise
            package = "pillow" if exc.name == "PIL" else exc.name
            raise DataError(f"--dataset {name} needs the Python package {exc.name!r}, which "
                            f"is not installed (pip install {package})") from None
        return getattr(found, function)(data_dir, seed, **options)
    load.about = about
    return load


# name -> load(data_dir, seed, **options) -> DataBundle
DATASETS = {
    "digits": _loader("digits", "digits", about="bundled with scikit-learn"),
    "fashion_mnist": _loader("fashion_mnist", "idx", "load_fashion_mnist",
                             about="Debian's dataset-fashion-mnist, or IDX files in --data-dir"),
    "mnist": _loader("mnist", "idx", "load_mnist",
                     about="MNIST or KMNIST IDX files in --data-dir"),
    "cifar10": _loader("cifar10", "cifar", "load_cifar10", about="python batches"),
    "cifar100": _loader("cifar100", "cifar", "load_cifar100", about="python batches"),
    "imagefolder": _loader("imagefolder", "imagefolder", about="train/ and val/ class folders"),
    "synthetic": _loader("synthetic", "synthetic", about="random, for benchmarks"),
}


def load_dataset(name, data_dir=None, seed=0, **options):
    """The train/test (and val, where it has one) split of dataset `name` (see DATASETS)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir, seed, **options)


__all__ = ["DATASETS", "DataBundle", "DataError", "load_dataset", "shard_loader",
           "steps_per_epoch"]
