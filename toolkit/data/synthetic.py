"""Synthetic images with learnable class structure, for benchmarks (no files needed).

Each class has a smooth random prototype (random values on a coarse grid, bilinearly
upsampled, unit variance); a sample is its class prototype plus Gaussian noise. Samples
are generated on access from (data_seed, split, index), so any size costs no memory and
the data do not depend on the training seed (runs with different seeds see the same
data, as with the other datasets). Default shape: CIFAR (3 x 32 x 32, 10 classes,
50,000 train / 10,000 test).
"""
import numpy as np
import torch
from torch.utils.data import Dataset

from toolkit.data.augment import sample_rng
from toolkit.data.errors import DataError

DEFAULTS = dict(num_train=50_000, num_test=10_000, num_classes=10, channels=3, image_size=32,
                noise=1.0, data_seed=0)
_TRAIN, _TEST, _PROTOTYPES = 0, 1, 2  # the "epoch" slot of sample_rng names the stream


def make_prototypes(num_classes, channels, image_size, data_seed):
    coarse = max(1, image_size // 4)
    rng = sample_rng(data_seed, _PROTOTYPES, 0)
    grid = torch.from_numpy(rng.standard_normal((num_classes, channels, coarse, coarse),
                                                dtype=np.float32))
    smooth = torch.nn.functional.interpolate(grid, size=(image_size, image_size),
                                             mode="bilinear", align_corners=False)
    flat = smooth.flatten(1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)
    return flat.view_as(smooth)


class SyntheticImages(Dataset):
    def __init__(self, prototypes, size, noise, data_seed, split):
        self.prototypes, self.size, self.noise = prototypes, size, float(noise)
        self.data_seed, self.split = data_seed, split

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(f"synthetic sample {index} out of range 0..{self.size - 1}")
        rng = sample_rng(self.data_seed, self.split, index)
        label = int(rng.integers(len(self.prototypes)))
        prototype = self.prototypes[label]
        noise = torch.from_numpy(rng.standard_normal(prototype.shape, dtype=np.float32))
        return prototype + self.noise * noise, label


def _checked(options):
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise DataError(f"synthetic: unknown option(s) {', '.join(sorted(unknown))} "
                        f"(supported: {', '.join(DEFAULTS)})")
    values = {**DEFAULTS, **options}
    for key in ("num_train", "num_test", "num_classes", "channels", "image_size"):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"synthetic: {key} must be a positive integer, got {value!r}")
    if values["num_classes"] < 2:
        raise DataError(f"synthetic: num_classes must be >= 2, got {values['num_classes']}")
    if not float(values["noise"]) >= 0:
        raise DataError(f"synthetic: noise must be >= 0, got {values['noise']!r}")
    return values


def load(data_dir=None, seed=0, **options):
    """data_dir is ignored (nothing is read); seed is the training seed, also unused."""
    v = _checked(options)
    prototypes = make_prototypes(v["num_classes"], v["channels"], v["image_size"],
                                 v["data_seed"])
    from toolkit.data import DataBundle
    return DataBundle(
        train=SyntheticImages(prototypes, v["num_train"], v["noise"], v["data_seed"], _TRAIN),
        test=SyntheticImages(prototypes, v["num_test"], v["noise"], v["data_seed"], _TEST),
        num_classes=v["num_classes"], in_channels=v["channels"], image_size=v["image_size"])
