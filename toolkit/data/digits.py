"""The handwritten digits that scikit-learn ships: 1,797 real 8x8 images, no download.

The train/test split is fixed (its own seed, independent of the training seed) so that
runs with different seeds are scored on the same test images.
"""
import torch
from torch.utils.data import TensorDataset

SPLIT_SEED = 20240601
TEST_FRACTION = 0.2


def load(data_dir=None, seed=0, **options):
    from sklearn.datasets import load_digits

    from toolkit.data import DataBundle
    from toolkit.data.errors import DataError

    if options:
        raise DataError(f"digits takes no options, got {', '.join(sorted(options))}")
    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(raw.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(TEST_FRACTION * len(labels)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    # Standardise with training statistics only.
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return DataBundle(train=TensorDataset(images[train_idx], labels[train_idx]),
                      test=TensorDataset(images[test_idx], labels[test_idx]),
                      num_classes=10, in_channels=1, image_size=8)
