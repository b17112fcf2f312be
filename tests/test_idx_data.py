"""IDX data sets (fashion_mnist, mnist): the reader on files written here, one-line errors for
every bad file, the validation split, --train-subset, --eval-interval, and one 2-rank run on
the real Fashion-MNIST files when Debian's package is installed."""
import gzip
import os

import numpy as np
import pytest
import torch

from launch.train import parser
from tests.train_util import records, summary, train_ranks, train_single
from toolkit import config
from toolkit.data import DATASETS, DataError, load_dataset, shard_loader
from toolkit.data import idx
from toolkit.data.idx import FILES, IMAGES_MAGIC, LABELS_MAGIC, read_idx


def write_idx(path, array, magic=None):
    """An IDX file of uint8 `array`, gzip-compressed when `path` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    data = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + \
        array.tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as handle:
        handle.write(data)
    return str(path)


def fake_set(root, n_train=120, n_test=40, gz=True):
    """Four IDX files; training image i carries i in its first two pixels, so a sample
    tells which file position it came from."""
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
        write_idx(os.path.join(root, FILES[f"{split}_images"] + suffix), images)
        write_idx(os.path.join(root, FILES[f"{split}_labels"] + suffix), labels)
    return str(root)


def positions(dataset):
    """File positions of the training images in a split (see fake_set)."""
    pixels = dataset.images[:, 0, :2].long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


# ---------------------------------------------------------------- the reader

@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_reader_reads_raw_and_gzip_files(tmp_path, name):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 256
    path = write_idx(tmp_path / name, images)
    assert np.array_equal(read_idx(path, IMAGES_MAGIC), images)
    labels = write_idx(tmp_path / ("y" + name), [7, 0, 9])
    assert read_idx(labels, LABELS_MAGIC).tolist() == [7, 0, 9]


def test_loader_gives_standardised_1x28x28_splits(tmp_path):
    bundle = load_dataset("mnist", fake_set(tmp_path, gz=False), val_size=20)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (100, 20, 40)
    x, y = bundle.train[3]
    assert x.shape == (1, 28, 28) and isinstance(y, int) and 0 <= y < 10
    # the training images used have mean 0 and std 1; val and test share their statistics
    train = np.stack([bundle.train[i][0].numpy() for i in range(len(bundle.train))])
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-4
    assert bundle.test.mean == bundle.val.mean == bundle.train.mean


def test_registered_and_listed_in_help_from_the_registry():
    assert {"fashion_mnist", "mnist"} <= set(DATASETS)
    text = " ".join(parser().format_help().split())
    for name, load in DATASETS.items():
        assert f"{name} ({' '.join(load.about.split())})" in text
    with pytest.raises(config.ConfigError, match="--dataset must be one of digits, "):
        config.parse(parser(), ["--dataset", "emnist"])


# ---------------------------------------------------------------- bad files

def _break(root, case):
    """Spoil the fake set in `root` one way; returns the path the error must name."""
    path = os.path.join(root, FILES["train_labels"] + ".gz")
    if case == "missing":
        os.remove(path)
        return FILES["train_labels"]
    if case == "wrong magic":  # labels written as images
        return write_idx(path, np.zeros((120, 28, 28)), magic=IMAGES_MAGIC)
    if case == "count mismatch":
        return write_idx(path, np.zeros(119))
    if case == "wrong dims":
        path = os.path.join(root, FILES["train_images"] + ".gz")
        return write_idx(path, np.zeros((120, 14, 14)))
    raw = gzip.decompress(open(path, "rb").read())
    if case == "truncated raw":
        os.remove(path)
        path = path[:-3]
        with open(path, "wb") as handle:
            handle.write(raw[:-5])
        return path
    if case == "too long":
        with gzip.open(path, "wb") as handle:
            handle.write(raw + b"\0")
        return path
    packed = open(path, "rb").read()
    with open(path, "wb") as handle:  # "truncated gzip" or "corrupt gzip"
        handle.write(packed[:len(packed) // 2] if case == "truncated gzip" else
                     packed[:10] + bytes(b ^ 0xFF for b in packed[10:-8]) + packed[-8:])
    return path


@pytest.mark.parametrize("case", ["missing", "wrong magic", "count mismatch", "wrong dims",
                                  "truncated raw", "too long", "truncated gzip",
                                  "corrupt gzip"])
def test_every_bad_file_is_a_one_line_data_error_naming_it(tmp_path, case):
    root = fake_set(tmp_path)
    named = _break(root, case)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root, val_size=10)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FASHION_MNIST_DIR", str(tmp_path / "not-installed"))
    for data_dir in (None, str(tmp_path / "nowhere")):
        with pytest.raises(DataError) as info:
            load_dataset("fashion_mnist", data_dir)
        message = str(info.value)
        assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
        assert "train-images-idx3-ubyte[.gz]" in message and "\n" not in message
    with pytest.raises(DataError, match="mnist: no data directory given .*--data-dir DIR"):
        load_dataset("mnist")


def test_bad_options_are_data_errors(tmp_path):
    root = fake_set(tmp_path)
    for options, text in (({"val_size": 120}, "val_size 120 must leave training images"),
                          ({"val_size": 20, "train_subset": 101}, "train_subset 101 exceeds"),
                          ({"augment": True}, "unknown option(s) augment")):
        with pytest.raises(DataError, match=text.replace("(", r"\(").replace(")", r"\)")):
            load_dataset("mnist", root, **options)


def test_cli_bad_file_exits_2_with_one_line(tmp_path):
    root = fake_set(tmp_path / "data")
    path = _break(root, "truncated gzip")
    proc = train_single("--dataset", "mnist", "--data-dir", root, "--val-size", "10",
                        "--out", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: ") and path in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- splits

def test_val_split_is_disjoint_and_fixed_whatever_the_seed_or_subset(tmp_path):
    root = fake_set(tmp_path)
    a = load_dataset("mnist", root, seed=0, val_size=30)
    b = load_dataset("mnist", root, seed=5, val_size=30, train_subset=40)
    val = positions(a.val)
    assert len(set(val)) == 30 and not set(val) & set(positions(a.train))
    assert sorted(val + positions(a.train)) == list(range(120))
    assert positions(b.val) == val and val != list(range(30))  # drawn, not the first 30
    # --train-subset: the first N training images that are not held out, in file order
    assert positions(b.train) == [i for i in range(120) if i not in val][:40]
    assert load_dataset("mnist", root, val_size=0).val is None
    assert positions(load_dataset("mnist", root, val_size=0, train_subset=7).train) == \
        list(range(7))


def test_shards_split_the_training_images_between_ranks(tmp_path):
    bundle = load_dataset("mnist", fake_set(tmp_path), val_size=20)
    seen = []
    for rank in (0, 1):
        batches = list(shard_loader(bundle.train, 8, rank, 2, 3, 0, train=True))
        assert len(batches) == 100 // 16
        seen.append({tuple(x[0, 0, :2].tolist()) for xs, _ in batches for x in xs})
    assert len(seen[0]) == len(seen[1]) == 48 and not seen[0] & seen[1]


# ---------------------------------------------------------------- training

def test_eval_interval_scores_val_and_test_at_its_steps(tmp_path):
    """96 training images of batch 32: 3 steps per epoch; evaluations every 2 steps and at
    every epoch's end, once at a step that is both."""
    root = fake_set(tmp_path / "data", n_train=120, n_test=40)
    out = tmp_path / "run"
    proc = train_single("--dataset", "mnist", "--data-dir", root, "--val-size", "16",
                        "--train-subset", "96", "--epochs", "2", "--eval-interval", "2",
                        "--norm", "bn", "--strategy", "none", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = records(out, "eval")
    assert [(r["epoch"], r["step"]) for r in evals] == [(1, 2), (1, 3), (2, 4), (2, 6)]
    for r in evals:
        assert 0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert r["val_loss"] > 0 and r["test_loss"] > 0
    assert [r["step"] for r in records(out, "epoch")] == [3, 6]
    s = summary(out)
    assert (s["val_acc"], s["test_acc"]) == (evals[-1]["val_acc"], evals[-1]["test_acc"])
    assert (s["train_subset"], s["val_size"], s["steps"]) == (96, 16, 6)


# Measured: test accuracy 0.753-0.763, val 0.743-0.762 over seeds 0-3 (2 epochs, about 10 s).
TWO_RANK_MIN_ACC = 0.65


@pytest.mark.mpi
@pytest.mark.skipif(not os.path.isdir(idx.FASHION_MNIST_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed "
                           "(apt-get install dataset-fashion-mnist)")
def test_two_ranks_learn_fashion_mnist(tmp_path):
    """The real files, 2,000 training images, the default method (invariance layer, DaSGD);
    evaluations inside epochs too (collectives at the same step on both ranks), which score
    the averaged model without changing what the ranks train: the final model equals that of
    the same run without them, bit for bit."""
    out, plain = tmp_path / "run", tmp_path / "plain"
    args = ["--dataset", "fashion_mnist", "--train-subset", "2000", "--val-size", "1000",
            "--epochs", "2"]
    train_ranks(2, *args, "--eval-interval", "20", "--out", out)
    s = summary(out)
    assert s["world_size"] == 2 and s["steps"] == 2 * (2000 // 64)
    assert [r["step"] for r in records(out, "eval")] == [20, 31, 40, 60, 62]
    assert s["test_acc"] > TWO_RANK_MIN_ACC and s["val_acc"] > TWO_RANK_MIN_ACC, s
    train_ranks(2, *args, "--out", plain)
    a, b = (torch.load(summary(o)["checkpoint"], weights_only=True)["model"] for o in (out, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)
