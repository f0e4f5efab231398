import gzip
import struct

import pytest
import torch

from nepenthe.data import create_data
from nepenthe.data.fashion_mnist import RAW_FILES, prepare_fashion_mnist, raw_dir
from nepenthe.data.loader import ArrayLoader, ImageSplit
from nepenthe.data.registry import carve_validation
from nepenthe.errors import ConfigError, DataError


def write_idx_gz(folder, n_train=30, n_test=12, seed=0, test_labels=None):
    """Tiny Fashion-MNIST in its real on-disk format: big-endian IDX headers, gzip-compressed."""
    n_test = n_test if test_labels is None else len(test_labels)
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        if prefix == "t10k" and test_labels is not None:
            labels = torch.tensor(test_labels, dtype=torch.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.numpy().tobytes())


def test_fashion_mnist_unpacks_debian_layout_and_carves_validation(tmp_path):
    write_idx_gz(tmp_path / "debian")
    data = create_data("fashion_mnist", str(tmp_path / "root"), source_dir=str(tmp_path / "debian"), val_size=6)
    assert data.sizes() == {"train": 24, "val": 6, "test": 12}
    assert (data.num_classes, data.in_chans, data.image_size) == (10, 1, (28, 28))
    assert sorted(p.name for p in raw_dir(tmp_path / "root").iterdir()) == sorted(RAW_FILES)
    again = create_data("fashion_mnist", str(tmp_path / "root"), source_dir="/nonexistent", val_size=6)
    assert torch.equal(again.val.labels, data.val.labels)  # fixed split seed, independent of the run
    subset = create_data("fashion_mnist", str(tmp_path / "root"), val_size=6, train_subset=10, test_subset=5)
    assert subset.sizes() == {"train": 10, "val": 6, "test": 5}
    assert torch.equal(subset.test.labels, data.test.labels[:5])  # the first five test images
    with pytest.raises(DataError, match=r"dataset.kwargs.test_subset=13 is not valid; use null \(all 12 test "
                                        r"images\) or a count in 1..12"):
        create_data("fashion_mnist", str(tmp_path / "root"), val_size=6, test_subset=13)


def test_missing_data_root_says_how_to_fix_it(tmp_path):
    with pytest.raises(DataError, match=r"Fashion-MNIST not found in .*FashionMNIST/raw.*apt-get install -y "
                                        r"dataset-fashion-mnist"):
        prepare_fashion_mnist(tmp_path / "empty", source_dir=tmp_path / "nothing")


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    write_idx_gz(tmp_path / "debian")
    prepare_fashion_mnist(tmp_path / "root", source_dir=tmp_path / "debian")
    victim = raw_dir(tmp_path / "root") / "train-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is corrupt"):
        create_data("fashion_mnist", str(tmp_path / "root"), val_size=6)


def test_unknown_dataset_and_bad_options_are_named():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar1000'; known: cifar10, cifar100, dtd, fashion_mnist, fgvc_aircraft, flowers102, imagenet, pacs, synthetic, tiny_imagenet, vlcs"):
        create_data("cifar1000")
    with pytest.raises(ConfigError, match=r"dataset 'synthetic' has no option 'colour'; valid: .*image_size"):
        create_data("synthetic", colour=True)
    tiny = ImageSplit(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match="dataset.val_size=0 must be between 1 and 4"):
        carve_validation(tiny, 0, 0)


def test_loader_normalises_shuffles_reproducibly_and_augments_in_batch():
    images = torch.arange(8 * 4 * 4, dtype=torch.float32).view(8, 1, 4, 4).to(torch.uint8)
    split = ImageSplit(images, torch.arange(8))
    plain = list(ArrayLoader(split, 3, (0.0,), (1 / 255,)))
    assert [len(y) for _, y in plain] == [3, 3, 2]
    assert torch.equal(plain[0][0], images[:3].float())  # mean 0, std 1/255 -> raw pixel values
    a = ArrayLoader(split, 8, (0.0,), (1 / 255,), shuffle=True, augment=("crop", "flip"), crop_padding=1, seed=3)
    first = next(iter(a))
    assert torch.equal(next(iter(a))[1], first[1])  # same epoch, same order
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[1], first[1])
    x, y = first
    assert set(y.tolist()) == set(range(8))
    padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1))
    for out, label in zip(x, y):
        # every augmented image is one of the 9 one-pixel crops of its source, mirrored or not
        crops = [padded[label, :, oy:oy + 4, ox:ox + 4] for oy in range(3) for ox in range(3)]
        assert any(torch.equal(out, c) or torch.equal(out, c.flip(-1)) for c in crops)


def test_synthetic_is_deterministic_and_learnable_sized():
    a, b = create_data("synthetic", seed=1), create_data("synthetic", seed=1)
    assert torch.equal(a.train.images, b.train.images)
    assert a.sizes() == {"train": 2000, "val": 500, "test": 1000}
