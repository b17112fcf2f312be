"""Datasets by name, and the per-rank sharding every training run uses.

A loader is `load(data_dir, seed, **options) -> DataBundle`; register it in DATASETS.
"""
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


def _missing_dependency(dataset, package):
    def load(*args, **kwargs):
        raise DataError(f"--dataset {dataset} needs the Python package {package!r}, which is "
                        f"not installed (pip install {'pillow' if package == 'PIL' else package})")
    return load


def _registry():
    from toolkit.data import digits
    found = {"digits": digits.load}
    # Optional loaders live in their own modules; each registers under its dataset name.
    for module_name, names in (("cifar", ("cifar10", "cifar100")),
                               ("imagefolder", ("imagefolder",)),
                               ("synthetic", ("synthetic",))):
        try:
            module = __import__(f"toolkit.data.{module_name}", fromlist=["load"])
        except ModuleNotFoundError as exc:
            if exc.name == f"toolkit.data.{module_name}":
                continue
            for name in names:  # an optional dependency is missing: say so when asked for
                found[name] = _missing_dependency(name, exc.name)
            continue
        for name in names:
            found[name] = getattr(module, f"load_{name}", getattr(module, "load", None))
    return found


DATASETS = _registry()


def load_dataset(name, data_dir=None, seed=0, **options):
    """The train/test split of dataset `name` (see DATASETS)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir, seed, **options)


__all__ = ["DATASETS", "DataBundle", "DataError", "load_dataset", "shard_loader",
           "steps_per_epoch"]
