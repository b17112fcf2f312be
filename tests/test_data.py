"""CIFAR pickle batches, ImageFolder trees and synthetic data: real files in tmp_path,
reproducible augmentation, clear errors for bad paths."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.mpi_util import REPO
from toolkit.data import DATASETS, DataError, load_dataset, shard_loader
from toolkit.data.augment import random_resized_crop, sample_rng
from toolkit.data.cifar import STATS


# ---------------------------------------------------------------- CIFAR fixtures

def _write_batch(path, images, labels, label_key):
    # Same structure as the published batches: bytes keys, (N, 3072) uint8 array.
    payload = {b"batch_label": b"fake", label_key.encode(): list(map(int, labels)),
               b"data": images.reshape(len(images), -1)}
    with open(path, "wb") as handle:
        pickle.dump(payload, handle, protocol=2)


def _fake_cifar(root, name, per_file=6, seed=0):
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        files, key, classes = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10
    else:
        files, key, classes = ["train", "test"], "fine_labels", 100
    os.makedirs(root, exist_ok=True)
    written = {}
    for f in files:
        images = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, classes, size=per_file)
        _write_batch(os.path.join(root, f), images, labels, key)
        written[f] = (images, labels)
    return written


def test_all_datasets_registered():
    assert {"digits", "cifar10", "cifar100", "imagefolder", "synthetic"} <= set(DATASETS)


def test_cifar10_loads_batches_in_subdirectory(tmp_path):
    written = _fake_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    bundle = load_dataset("cifar10", str(tmp_path), seed=3)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert len(bundle.train) == 30 and len(bundle.test) == 6
    # Test images: exact per-channel normalisation of the stored pixels, no augmentation.
    images, labels = written["test_batch"]
    x, y = bundle.test[4]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in STATS["cifar10"])
    expected = (torch.from_numpy(images[4]).float() / 255 - mean) / std
    assert y == labels[4] and x.dtype == torch.float32
    assert torch.allclose(x, expected, atol=1e-6)
    # Train order follows data_batch_1..5.
    assert bundle.train[13][1] == written["data_batch_3"][1][1]


def _unnormalise(x, name="cifar10"):
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in STATS[name])
    return torch.round((x * std + mean) * 255)


def test_cifar_train_augmentation_is_crop_and_flip_of_the_image(tmp_path):
    written = _fake_cifar(tmp_path, "cifar10")
    bundle = load_dataset("cifar10", str(tmp_path), seed=0)
    original = torch.from_numpy(written["data_batch_1"][0][2]).float()
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    for epoch in range(4):
        bundle.train.set_epoch(epoch)
        seen = _unnormalise(bundle.train[2][0])
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)
                   if torch.equal(seen, (padded[:, dy:dy + 32, dx:dx + 32].flip(-1) if flip
                                         else padded[:, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"epoch {epoch}: not a padded crop (+flip) of the original"


def test_cifar_augmentation_reproducible_from_seed_epoch_index(tmp_path):
    _fake_cifar(tmp_path, "cifar10")
    first = load_dataset("cifar10", str(tmp_path), seed=7).train
    again = load_dataset("cifar10", str(tmp_path), seed=7).train  # as after a resume
    other_seed = load_dataset("cifar10", str(tmp_path), seed=8).train
    first.set_epoch(5)
    again.set_epoch(5)
    other_seed.set_epoch(5)
    batch = [first[i][0] for i in range(30)]
    # Reading order does not matter: each sample has its own generator.
    assert all(torch.equal(batch[i], again[i][0]) for i in reversed(range(30)))
    assert not all(torch.equal(batch[i], other_seed[i][0]) for i in range(30))
    first.set_epoch(6)
    assert not all(torch.equal(batch[i], first[i][0]) for i in range(30))
    first.set_epoch(5)
    assert all(torch.equal(batch[i], first[i][0]) for i in range(30))


def test_cifar_through_shard_loader_sets_epoch(tmp_path):
    _fake_cifar(tmp_path, "cifar10")
    train = load_dataset("cifar10", str(tmp_path), seed=1).train
    batches = list(shard_loader(train, 4, rank=1, world_size=2, seed=1, epoch=3, train=True))
    assert train.epoch == 3 and len(batches) == 3
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64


def test_cifar_resumed_mid_epoch_sees_the_same_augmented_batches(tmp_path):
    _fake_cifar(tmp_path, "cifar10")
    args = dict(batch_size=3, rank=0, world_size=2, seed=4, epoch=2, train=True)
    full = list(shard_loader(load_dataset("cifar10", str(tmp_path), seed=4).train, **args))
    # A new process (fresh dataset, its epoch never set before) resuming at step 2.
    fresh = load_dataset("cifar10", str(tmp_path), seed=4).train
    resumed = list(shard_loader(fresh, start_step=2, **args))
    assert len(full) == 5 and len(resumed) == 3
    for (x_full, y_full), (x_res, y_res) in zip(full[2:], resumed):
        assert torch.equal(x_full, x_res) and torch.equal(y_full, y_res)


def test_cifar100_fine_labels(tmp_path):
    written = _fake_cifar(tmp_path / "cifar-100-python", "cifar100")
    bundle = load_dataset("cifar100", str(tmp_path))
    assert bundle.num_classes == 100 and len(bundle.train) == 6
    assert [bundle.test[i][1] for i in range(6)] == list(written["test"][1])


def test_cifar_missing_and_corrupt_paths(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        load_dataset("cifar10", str(missing))
    with pytest.raises(DataError, match="no data directory given"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="data_batch_1.*test_batch"):
        load_dataset("cifar10", str(tmp_path))  # exists but empty
    _fake_cifar(tmp_path, "cifar10")
    assert load_dataset("cifar10", str(tmp_path), image_size=32).image_size == 32
    with pytest.raises(DataError, match="image_size 64 is not supported"):
        load_dataset("cifar10", str(tmp_path), image_size=64)
    corrupt = tmp_path / "data_batch_4"
    corrupt.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match=f"{corrupt} is not a readable CIFAR batch"):
        load_dataset("cifar10", str(tmp_path))
    _write_batch(corrupt, np.zeros((2, 3, 16, 16), np.uint8), [0, 1], "labels")
    with pytest.raises(DataError, match=r"data_batch_4 has data of shape \(2, 768\)"):
        load_dataset("cifar10", str(tmp_path))
    _write_batch(corrupt, np.zeros((2, 3, 32, 32), np.uint8), [0, 10], "labels")
    with pytest.raises(DataError, match="labels outside 0..9"):
        load_dataset("cifar10", str(tmp_path))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    _fake_cifar(tmp_path, "cifar10")
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({"data": _RunsCode(), "labels": []}, handle)
    with pytest.raises(DataError, match="test_batch.*refusing to load"):
        load_dataset("cifar10", str(tmp_path))


# ---------------------------------------------------------------- ImageFolder

def _fake_tree(root, sizes=((40, 30), (30, 50)), classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            os.makedirs(root / split / c)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(pixels).save(root / split / c / f"img{i}.{ext}")


def test_imagefolder_shapes_labels_and_center_crop(tmp_path):
    _fake_tree(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    bundle = load_dataset("imagefolder", str(tmp_path), image_size=16)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (2, 3, 16)
    assert len(bundle.train) == 6 and len(bundle.test) == 6
    assert [bundle.test[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]  # sorted class names
    x, _ = bundle.test[0]
    assert x.shape == (3, 16, 16) and torch.isfinite(x).all()
    assert torch.equal(x, bundle.test[0][0])  # evaluation transform is deterministic
    # A uniformly grey image stays uniform through resize + crop + normalisation.
    grey = tmp_path / "val" / "dog" / "img0.png"
    Image.new("RGB", (33, 21), (128, 128, 128)).save(grey)
    x, _ = bundle.test[3]
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x, expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-5)


def test_imagefolder_augmentation_reproducible(tmp_path):
    _fake_tree(tmp_path)
    train = load_dataset("imagefolder", str(tmp_path), seed=2, image_size=12).train
    again = load_dataset("imagefolder", str(tmp_path), seed=2, image_size=12).train
    for dataset in (train, again):
        dataset.set_epoch(1)
    epoch1 = [train[i][0] for i in range(6)]
    assert all(x.shape == (3, 12, 12) for x in epoch1)
    assert all(torch.equal(epoch1[i], again[i][0]) for i in range(6))
    train.set_epoch(2)
    assert not all(torch.equal(epoch1[i], train[i][0]) for i in range(6))


def test_random_resized_crop_extreme_aspect_falls_back():
    wide = Image.new("RGB", (200, 3), (10, 20, 30))
    out = random_resized_crop(wide, 8, sample_rng(0, 0, 0))
    assert out.size == (8, 8)
    assert np.asarray(out)[4, 4].tolist() == [10, 20, 30]


def test_imagefolder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'x'} does not exist"):
        load_dataset("imagefolder", str(tmp_path / "x"))
    _fake_tree(tmp_path)
    with pytest.raises(DataError, match="image_size must be an integer"):
        load_dataset("imagefolder", str(tmp_path), image_size="big")
    bad = tmp_path / "val" / "cat" / "img1.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    bundle = load_dataset("imagefolder", str(tmp_path), image_size=8)
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        bundle.test[1]
    os.makedirs(tmp_path / "val" / "bird")
    Image.new("RGB", (9, 9)).save(tmp_path / "val" / "bird" / "a.png")
    with pytest.raises(DataError, match="class 'bird' in .*val does not exist in the train"):
        load_dataset("imagefolder", str(tmp_path))
    os.makedirs(tmp_path / "train" / "bird")
    with pytest.raises(DataError, match=f"{tmp_path / 'train' / 'bird'} holds no"):
        load_dataset("imagefolder", str(tmp_path))


def test_imagefolder_needs_val_split(tmp_path):
    os.makedirs(tmp_path / "train" / "a")
    with pytest.raises(DataError, match="has no val or test/ directory"):
        load_dataset("imagefolder", str(tmp_path))


# ---------------------------------------------------------------- synthetic

def test_synthetic_defaults_and_determinism():
    bundle = load_dataset("synthetic", seed=0)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert (len(bundle.train), len(bundle.test)) == (50_000, 10_000)
    other = load_dataset("synthetic", seed=99)  # the training seed does not change the data
    for i in (0, 49_999):
        assert torch.equal(bundle.train[i][0], other.train[i][0])
        assert bundle.train[i][1] == other.train[i][1]
    assert not torch.equal(bundle.train[0][0], bundle.test[0][0])
    changed = load_dataset("synthetic", data_seed=1)
    assert not torch.equal(bundle.train[0][0], changed.train[0][0])


def test_synthetic_classes_are_learnable():
    bundle = load_dataset("synthetic", num_train=400, num_test=200, num_classes=4,
                          channels=1, image_size=8)
    def stack(ds):
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs).flatten(1), torch.tensor(ys)
    x_train, y_train = stack(bundle.train)
    x_test, y_test = stack(bundle.test)
    assert set(y_train.tolist()) == {0, 1, 2, 3}
    # Nearest class mean, estimated from the training samples only.
    means = torch.stack([x_train[y_train == c].mean(0) for c in range(4)])
    predicted = torch.cdist(x_test, means).argmin(1)
    accuracy = (predicted == y_test).float().mean().item()
    assert accuracy > 0.9, f"nearest-mean accuracy {accuracy} (chance 0.25)"


def test_synthetic_bad_options():
    with pytest.raises(DataError, match="unknown option.*colour"):
        load_dataset("synthetic", colour=True)
    with pytest.raises(DataError, match="num_train must be a positive integer"):
        load_dataset("synthetic", num_train=0)


def test_data_works_without_pillow_and_imagefolder_says_what_is_missing():
    """Pillow is an optional extra: without it digits still loads and imagefolder gives one
    clear line naming the package (run in a fresh interpreter where PIL cannot import)."""
    code = (
        "import sys; sys.modules['PIL'] = None\n"
        "from toolkit.data import load_dataset, DataError\n"
        "assert len(load_dataset('digits', None, seed=0).train) > 1000\n"
        "try:\n"
        "    load_dataset('imagefolder', '/nonexistent', seed=0)\n"
        "except DataError as exc:\n"
        "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "needs the Python package 'PIL'" in proc.stdout and "pip install pillow" in proc.stdout


@pytest.mark.parametrize("n, batch, world", [(1438, 32, 2), (1438, 32, 3), (100, 7, 4)])
def test_training_shards_are_disjoint_equal_and_seeded(n, batch, world):
    from toolkit.data.sharding import shard_indices, steps_per_epoch
    shards = [shard_indices(n, batch, r, world, seed=5, epoch=2, train=True)
              for r in range(world)]
    steps = steps_per_epoch(n, batch, world)
    assert all(len(s) == steps and all(len(b) == batch for b in s) for s in shards)
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat)) == steps * batch * world  # disjoint, nothing repeated
    assert shards == [shard_indices(n, batch, r, world, seed=5, epoch=2, train=True)
                      for r in range(world)]  # the same on every call (and rank)
    assert shards[0] != shard_indices(n, batch, 0, world, seed=5, epoch=3, train=True)
    # evaluation: every sample exactly once across ranks
    test = [i for r in range(world) for b in shard_indices(n, batch, r, world, 0, 0, False)
            for i in b]
    assert sorted(test) == list(range(n))
