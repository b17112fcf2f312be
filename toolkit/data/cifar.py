"""CIFAR-10 / CIFAR-100 from the standard "python version" pickle batches on disk.

Layout (either directly in data_dir or in its usual subdirectory):
  CIFAR-10:  data_batch_1 .. data_batch_5, test_batch   (in data_dir or data_dir/cifar-10-batches-py)
  CIFAR-100: train, test                                 (in data_dir or data_dir/cifar-100-python)
Each file is a pickled dict with "data" (N x 3072 uint8, channel-major 32x32) and
"labels" (CIFAR-10) or "fine_labels" (CIFAR-100).

Train: zero-pad 4 + random 32x32 crop + horizontal flip, reproducible from
(seed, epoch, index); test: no augmentation. Both: per-channel normalisation.
The files are read with a restricted unpickler that only builds numpy arrays and plain
containers, so a crafted file cannot run code.
"""
import os
import pickle

import numpy as np
import torch
from torch.utils.data import Dataset

from toolkit.data.augment import EpochSeeded, maybe_flip, normalize, pad_and_random_crop
from toolkit.data.errors import DataError

# Per-channel mean / std of the CIFAR training images (published statistics).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
LAYOUT = {
    "cifar10": dict(subdir="cifar-10-batches-py", classes=10, label_key="labels",
                    train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",)),
    "cifar100": dict(subdir="cifar-100-python", classes=100, label_key="fine_labels",
                     train=("train",), test=("test",)),
}
IMAGE_SIZE = 32
PADDING = 4

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


class CifarImages(EpochSeeded, Dataset):
    """uint8 images (N, 3, 32, 32) and int labels; yields normalised float tensors."""

    def __init__(self, images, labels, mean, std, *, augment, seed):
        self.images, self.labels = images, labels
        self.mean, self.std = mean, std
        self.augment, self.seed = augment, int(seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index].float().div_(255.0)
        if self.augment:
            rng = self.rng(index)
            image = maybe_flip(pad_and_random_crop(image, PADDING, rng), rng)
        return normalize(image, self.mean, self.std), int(self.labels[index])


def _find_dir(name, data_dir):
    layout = LAYOUT[name]
    if data_dir is None:
        raise DataError(f"{name}: no data directory given (pass --data-dir with the "
                        f"{layout['subdir']} batches)")
    if not os.path.isdir(data_dir):
        raise DataError(f"{name}: data directory {data_dir} does not exist")
    for candidate in (data_dir, os.path.join(data_dir, layout["subdir"])):
        if all(os.path.isfile(os.path.join(candidate, f))
               for f in layout["train"] + layout["test"]):
            return candidate
    expected = ", ".join(layout["train"] + layout["test"])
    raise DataError(f"{name}: {data_dir} holds no complete set of batches "
                    f"(need {expected} in it or in {layout['subdir']}/)")


def _read_batch(name, path):
    """(uint8 images (n, 3, 32, 32), int64 labels (n,)) of one pickle batch."""
    layout = LAYOUT[name]
    try:
        with open(path, "rb") as handle:
            raw = _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # any failure to unpickle means the file is unusable
        raise DataError(f"{name}: {path} is not a readable CIFAR batch "
                        f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{name}: {path} is not a CIFAR batch (holds a {type(raw).__name__})")
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    if "data" not in raw or layout["label_key"] not in raw:
        raise DataError(f"{name}: {path} lacks the 'data' or '{layout['label_key']}' entry")
    data = np.asarray(raw["data"])
    labels = np.asarray(raw[layout["label_key"]])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE ** 2:
        raise DataError(f"{name}: {path} has data of shape {data.shape} and dtype {data.dtype}, "
                        f"expected (N, 3072) uint8")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{name}: {path} has {labels.size} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= layout["classes"]):
        raise DataError(f"{name}: {path} has labels outside 0..{layout['classes'] - 1}")
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def _read_split(name, directory, files):
    parts = [_read_batch(name, os.path.join(directory, f)) for f in files]
    images = torch.cat([p[0] for p in parts])
    if len(images) == 0:
        raise DataError(f"{name}: the batches {', '.join(files)} in {directory} are empty")
    return images, torch.cat([p[1] for p in parts])


def _load(name, data_dir, seed, augment=True, image_size=IMAGE_SIZE, **options):
    if options:
        raise DataError(f"{name}: unknown option(s) {', '.join(sorted(options))} "
                        f"(supported: augment, image_size)")
    if image_size != IMAGE_SIZE:
        raise DataError(f"{name}: images are {IMAGE_SIZE}x{IMAGE_SIZE}; image_size "
                        f"{image_size!r} is not supported")
    directory = _find_dir(name, data_dir)
    layout, (mean, std) = LAYOUT[name], STATS[name]
    train_images, train_labels = _read_split(name, directory, layout["train"])
    test_images, test_labels = _read_split(name, directory, layout["test"])
    from toolkit.data import DataBundle
    return DataBundle(
        train=CifarImages(train_images, train_labels, mean, std, augment=augment, seed=seed),
        test=CifarImages(test_images, test_labels, mean, std, augment=False, seed=seed),
        num_classes=layout["classes"], in_channels=3, image_size=IMAGE_SIZE)


def load_cifar10(data_dir=None, seed=0, **options):
    return _load("cifar10", data_dir, seed, **options)


def load_cifar100(data_dir=None, seed=0, **options):
    return _load("cifar100", data_dir, seed, **options)
