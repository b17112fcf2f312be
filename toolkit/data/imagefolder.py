"""An ImageFolder tree read with Pillow: data_dir/train/<class>/*.png|jpg|jpeg and
data_dir/val/<class>/... (a directory named test/ is accepted in place of val/).

Classes are the sorted subdirectory names of train/; val/ may hold a subset of them.
Train: random resized crop (area 8-100 %, aspect 3/4-4/3) to image_size + horizontal
flip, reproducible from (seed, epoch, index). Test: resize the shorter side to
image_size / 0.875 and take the central image_size crop. Both: ImageNet per-channel
normalisation. Images are decoded on access; an unreadable file raises DataError naming it.
"""
import os

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from toolkit.data.augment import (EpochSeeded, normalize, pil_to_tensor, random_resized_crop,
                                  resize_center_crop)
from toolkit.data.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224


class ImageFolderImages(EpochSeeded, Dataset):
    def __init__(self, samples, image_size, *, augment, seed):
        self.samples = samples  # list of (path, label)
        self.image_size, self.augment, self.seed = image_size, augment, int(seed)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        image = _open_rgb(path)
        if self.augment:
            rng = self.rng(index)
            image = random_resized_crop(image, self.image_size, rng)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            image = resize_center_crop(image, self.image_size)
        return normalize(pil_to_tensor(image), MEAN, STD), label


def _open_rgb(path):
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"imagefolder: cannot read image {path} ({exc})") from exc


def _class_dirs(split_dir):
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())


def _samples(split_dir, class_index):
    samples = []
    for name in _class_dirs(split_dir):
        if name not in class_index:
            raise DataError(f"imagefolder: class {name!r} in {split_dir} does not exist "
                            f"in the train split")
        class_dir = os.path.join(split_dir, name)
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(EXTENSIONS))
        if not files:
            raise DataError(f"imagefolder: class directory {class_dir} holds no "
                            f"{'/'.join(EXTENSIONS)} images")
        samples.extend((os.path.join(class_dir, f), class_index[name]) for f in files)
    if not samples:
        raise DataError(f"imagefolder: {split_dir} has no class subdirectories with images")
    return samples


def _split_dir(data_dir, names):
    for name in names:
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            return path
    raise DataError(f"imagefolder: {data_dir} has no {' or '.join(names)}/ directory "
                    f"(expected {data_dir}/{names[0]}/<class>/<image>)")


def _check_size(image_size):
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"imagefolder: image_size must be an integer >= 8, got {image_size!r}")


def load(data_dir=None, seed=0, image_size=DEFAULT_IMAGE_SIZE, augment=True, **options):
    if options:
        raise DataError(f"imagefolder: unknown option(s) {', '.join(sorted(options))} "
                        f"(supported: image_size, augment)")
    _check_size(image_size)
    if data_dir is None:
        raise DataError("imagefolder: no data directory given (pass --data-dir with "
                        "train/<class>/ and val/<class>/ inside)")
    if not os.path.isdir(data_dir):
        raise DataError(f"imagefolder: data directory {data_dir} does not exist")
    train_dir = _split_dir(data_dir, ("train",))
    val_dir = _split_dir(data_dir, ("val", "test"))
    classes = _class_dirs(train_dir)
    class_index = {name: i for i, name in enumerate(classes)}
    train, val = _samples(train_dir, class_index), _samples(val_dir, class_index)
    # Decode one image of each split now, so a tree of non-images fails at start-up
    # rather than in the middle of the first epoch.
    _open_rgb(train[0][0])
    _open_rgb(val[0][0])
    from toolkit.data import DataBundle
    return DataBundle(
        train=ImageFolderImages(train, image_size, augment=augment, seed=seed),
        test=ImageFolderImages(val, image_size, augment=False, seed=seed),
        num_classes=len(classes), in_channels=3, image_size=image_size)
