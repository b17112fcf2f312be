"""Fashion-MNIST and MNIST-layout data sets: four IDX files (LeCun's MNIST format).

Files, gzip-compressed or raw, under their standard names (NAME.gz is tried before NAME):
  train-images-idx3-ubyte  train-labels-idx1-ubyte   (60,000 training images)
  t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte    (10,000 test images)
fashion_mnist reads them from where Debian's dataset-fashion-mnist package puts them unless
data_dir says otherwise; mnist (MNIST, KMNIST, any set in this layout) needs a data_dir.

IDX: a big-endian 4-byte magic number (0, 0, type code 0x08 = uint8, number of dimensions),
one big-endian uint32 per dimension, then the values in C order. Only uint8 images
(N x 28 x 28, magic 0x00000803) and uint8 labels (N, magic 0x00000801) are accepted, and a
file must be exactly as long as its header says: a short or padded file is refused, not
read as garbage.

Splits: test = the t10k files. Validation (val_size images, 0 for none) is drawn from the
whole training file with its own fixed seed, so it is the same for every training seed and
every train_subset; train_subset N then keeps the first N remaining training images in file
order. One mean and std, of the training images used, standardise all three splits. No
augmentation: these images are centred and size-normalised already.
"""
import gzip
import math
import os
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

from toolkit.data.errors import DataError

# Debian's dataset-fashion-mnist installs its four .gz files here.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
IMAGE_SIZE, NUM_CLASSES = 28, 10
DEFAULT_VAL_SIZE = 5000
SPLIT_SEED = 20240602  # the validation draw's own seed, independent of --seed
_HOW_TO_GET = {
    "fashion_mnist": "apt-get install dataset-fashion-mnist, or pass --data-dir DIR",
    "mnist": "pass --data-dir DIR",
}


def read_idx(path, magic):
    """The uint8 array stored in IDX file `path` (gzip or raw), whose magic must be `magic`."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":  # gzip's own magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DataError(f"{path} is a truncated or corrupt gzip file "
                            f"({type(exc).__name__}: {exc})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        what = "none (file shorter than 4 bytes)" if found is None else f"0x{found:08x}"
        raise DataError(f"{path} is not an IDX file of uint8 {'images' if ndim == 3 else 'labels'}"
                        f": magic number {what}, expected 0x{magic:08x}")
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)
    if len(raw) - header != size:
        state = "truncated" if len(raw) - header < size else "longer than its header says"
        raise DataError(f"{path} is {state}: {len(raw) - header} data bytes for dimensions "
                        f"{'x'.join(map(str, dims))} ({size} bytes)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def find_files(name, data_dir):
    """{key: path} of the four files in data_dir; a one-line DataError on how to get them."""
    need = ", ".join(f"{base}[.gz]" for base in FILES.values())
    if not os.path.isdir(data_dir):
        raise DataError(f"{name}: {data_dir} does not exist ({_HOW_TO_GET[name]} holding "
                        f"{need})")
    paths, missing = {}, []
    for key, base in FILES.items():
        found = [os.path.join(data_dir, f) for f in (base + ".gz", base)
                 if os.path.isfile(os.path.join(data_dir, f))]
        if found:
            paths[key] = found[0]
        else:
            missing.append(base)
    if missing:
        raise DataError(f"{name}: {data_dir} lacks {', '.join(missing)} (.gz or raw); "
                        f"{_HOW_TO_GET[name]} holding {need}")
    return paths


def read_split(name, images_path, labels_path):
    """(uint8 images (N, 28, 28), int64 labels (N,)) of one images/labels pair."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{name}: {images_path} holds {images.shape[1]}x{images.shape[2]} "
                        f"images, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(images) != len(labels):
        raise DataError(f"{name}: {labels_path} holds {len(labels)} labels for the "
                        f"{len(images)} images of {images_path}")
    if len(images) == 0:
        raise DataError(f"{name}: {images_path} holds no images")
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{name}: {labels_path} has labels outside 0..{NUM_CLASSES - 1} "
                        f"(found {labels.max()})")
    return images, labels.astype(np.int64)


def split_indices(n, val_size, train_subset):
    """(train, val) index arrays into the n training images, both in file order."""
    held_out = np.zeros(n, dtype=bool)
    if val_size:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
        held_out[order[:val_size].numpy()] = True
    train = np.flatnonzero(~held_out)
    return (train[:train_subset] if train_subset else train), np.flatnonzero(held_out)


def pixel_stats(images):
    """Mean and std of all pixels, from a histogram (no float copy of the images)."""
    counts = np.zeros(256, dtype=np.float64)
    for start in range(0, len(images), 4096):
        counts += np.bincount(images[start:start + 4096].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64)
    mean = counts @ values / counts.sum()
    std = math.sqrt(counts @ (values - mean) ** 2 / counts.sum())
    return mean, std or 1.0  # constant images: nothing to scale


class IdxImages(Dataset):
    """uint8 images (N, 28, 28) and labels; yields ((1, 28, 28) float, label), standardised."""

    def __init__(self, images, labels, mean, std):
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)
        self.mean, self.std = float(mean), float(std)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index].float().sub_(self.mean).div_(self.std)
        return image.unsqueeze_(0), int(self.labels[index])


def _load(name, data_dir, val_size=DEFAULT_VAL_SIZE, train_subset=None, **options):
    if options:
        raise DataError(f"{name}: unknown option(s) {', '.join(sorted(options))} "
                        f"(supported: val_size, train_subset)")
    if data_dir is None:
        raise DataError(f"{name}: no data directory given ({_HOW_TO_GET[name]} holding "
                        f"{', '.join(f'{b}[.gz]' for b in FILES.values())})")
    paths = find_files(name, data_dir)
    images, labels = read_split(name, paths["train_images"], paths["train_labels"])
    test_images, test_labels = read_split(name, paths["test_images"], paths["test_labels"])
    if not 0 <= val_size < len(images):
        raise DataError(f"{name}: val_size {val_size} must leave training images of the "
                        f"{len(images)} in {paths['train_images']}")
    train, val = split_indices(len(images), val_size, train_subset)
    if train_subset and train_subset > len(train):
        raise DataError(f"{name}: train_subset {train_subset} exceeds the {len(train)} "
                        f"training images left beside {val_size} for validation in "
                        f"{paths['train_images']}")
    mean, std = pixel_stats(images[train])
    from toolkit.data import DataBundle
    return DataBundle(
        train=IdxImages(images[train], labels[train], mean, std),
        test=IdxImages(test_images, test_labels, mean, std),
        val=IdxImages(images[val], labels[val], mean, std) if val_size else None,
        num_classes=NUM_CLASSES, in_channels=1, image_size=IMAGE_SIZE)


def load_fashion_mnist(data_dir=None, seed=0, **options):
    return _load("fashion_mnist", data_dir or FASHION_MNIST_DIR, **options)


def load_mnist(data_dir=None, seed=0, **options):
    return _load("mnist", data_dir, **options)
