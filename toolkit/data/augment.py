"""Image augmentation in plain torch / Pillow, reproducible from (seed, epoch, index).

Each sample draws its random numbers from its own generator seeded by (seed, epoch,
index), so the augmentation of a sample does not depend on which rank loads it, in which
order, or whether the run was resumed in the middle of an epoch: resumed runs are
bit-exact.
"""
import math

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _bilinear():
    # Pillow is only needed for image files (ImageFolder): importing it lazily keeps
    # digits, CIFAR and synthetic data working without it.
    from PIL import Image
    return Image.BILINEAR


def sample_rng(seed, epoch, index):
    """The random generator of sample `index` in `epoch` (numpy PCG64 via SeedSequence)."""
    entropy = [int(seed) & _MASK64, int(epoch) & _MASK64, int(index) & _MASK64]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


class EpochSeeded:
    """Mixin for datasets whose samples depend on the epoch; sharding calls set_epoch."""
    seed = 0
    epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def rng(self, index):
        return sample_rng(self.seed, self.epoch, index)


def pad_and_random_crop(image, padding, rng):
    """Zero-pad a (C, H, W) tensor by `padding` on each side and crop back to (H, W)."""
    _, height, width = image.shape
    top = int(rng.integers(0, 2 * padding + 1))
    left = int(rng.integers(0, 2 * padding + 1))
    padded = torch.nn.functional.pad(image, (padding, padding, padding, padding))
    return padded[:, top:top + height, left:left + width]


def maybe_flip(image, rng):
    """Mirror a (C, H, W) tensor left-right with probability 1/2."""
    return image.flip(-1) if rng.random() < 0.5 else image


def normalize(image, mean, std):
    """(C, H, W) float image minus per-channel mean, divided by per-channel std."""
    mean = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean) / std


def random_resized_crop(image, size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        attempts=10):
    """Crop a random area fraction in `scale` with aspect ratio in `ratio` (log-uniform)
    from a PIL image and resize it to size x size (the Inception-style crop)."""
    width, height = image.size
    area = width * height
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w = int(round(math.sqrt(target * aspect)))
        crop_h = int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            box = (left, top, left + crop_w, top + crop_h)
            return image.resize((size, size), _bilinear(), box=box)
    # Extreme aspect ratios: fall back to the largest central crop within `ratio`.
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        crop_w, crop_h = int(round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return image.resize((size, size), _bilinear(),
                        box=(left, top, left + crop_w, top + crop_h))


def resize_center_crop(image, size, crop_fraction=0.875):
    """Resize the shorter side to size / crop_fraction, then take the central size x size."""
    width, height = image.size
    short = int(round(size / crop_fraction))
    scale = short / min(width, height)
    new_w, new_h = max(size, int(round(width * scale))), max(size, int(round(height * scale)))
    image = image.resize((new_w, new_h), _bilinear())
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def pil_to_tensor(image):
    """An RGB PIL image as a float (3, H, W) tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
