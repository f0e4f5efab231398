"""Every dataset reads a tiny fixture written in its real on-disk layout: class count, split sizes, labels."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from nepenthe.data import create_data
from nepenthe.errors import ConfigError, DataError


def write_image(path, value, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def write_cifar(root, folder, train_files, test_files, label_key, classes, per_file=6):
    (root / folder).mkdir(parents=True)
    for i, name in enumerate(train_files + test_files):
        labels = [(i * per_file + j) % classes for j in range(per_file)]
        data = np.full((per_file, 3 * 32 * 32), i, dtype=np.uint8)
        with open(root / folder / name, "wb") as f:
            pickle.dump({b"data": data, label_key: labels}, f)


def test_cifar10_and_cifar100_read_torchvision_batches(tmp_path):
    write_cifar(tmp_path, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", 10)
    data = create_data("cifar10", str(tmp_path), val_size=5)
    assert data.num_classes == 10 and data.sizes() == {"train": 25, "val": 5, "test": 6}
    assert data.in_chans == 3 and data.image_size == (32, 32)
    assert data.test.labels.tolist() == [(30 + j) % 10 for j in range(6)]
    assert int(data.test.images.max()) == 5  # the test batch (written sixth) holds value 5
    write_cifar(tmp_path, "cifar-100-python", ["train"], ["test"], b"fine_labels", 100, per_file=20)
    data = create_data("cifar100", str(tmp_path), val_size=4)
    assert data.num_classes == 100 and data.sizes() == {"train": 16, "val": 4, "test": 20}
    assert data.test.labels.tolist() == list(range(20, 40))


def test_cifar_missing_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 not found: expected torchvision's layout in .*cifar-10-batches-py"):
        create_data("cifar10", str(tmp_path))


def test_tiny_imagenet_reads_train_folders_and_val_annotations(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    base.mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, wnid in enumerate(wnids):
        for k in range(3):
            write_image(base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 10 * c + k)
    annotations = []
    for k, wnid in enumerate(["n03", "n01", "n02", "n03"]):
        write_image(base / "val" / "images" / f"val_{k}.JPEG", 100 + k)
        annotations.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t8\t8")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    data = create_data("tiny_imagenet", str(tmp_path), image_size=8, val_size=2, progress=False)
    assert data.num_classes == 3 and data.sizes() == {"train": 7, "val": 2, "test": 4}
    assert data.test.labels.tolist() == [2, 0, 1, 2] and data.image_size == (8, 8)
    assert data.test.images[1].float().mean().item() == pytest.approx(101, abs=1)
    # decoded once, then read from the cache
    cached = list((tmp_path / ".nepenthe-cache").glob("*.pt"))
    assert len(cached) == 2
    again = create_data("tiny_imagenet", str(tmp_path), image_size=8, val_size=2, progress=False)
    assert torch.equal(again.test.images, data.test.images)


def write_domains(root, name, domains, classes, per_class=2):
    for d, domain in enumerate(domains):
        for c, cls in enumerate(classes):
            for k in range(per_class):
                write_image(root / name / domain / cls / f"{k}.png", 40 * d + 10 * c + k)


@pytest.mark.parametrize("name,domains,classes", [
    ("pacs", ["art_painting", "cartoon", "photo", "sketch"], ["dog", "elephant", "giraffe"]),
    ("vlcs", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], ["bird", "car"]),
])
def test_domain_sets_mixed_and_leave_one_domain_out(tmp_path, name, domains, classes):
    write_domains(tmp_path, name.upper(), domains, classes, per_class=5)
    total = len(domains) * len(classes) * 5
    mixed = create_data(name, str(tmp_path), image_size=8, val_fraction=0.1, test_fraction=0.2, progress=False)
    assert mixed.num_classes == len(classes) and mixed.extra["domains"] == sorted(domains)
    n_test, n_val = round(total * 0.2), round(total * 0.1)
    assert mixed.sizes() == {"train": total - n_test - n_val, "val": n_val, "test": n_test}
    held = sorted(domains)[1]
    lodo = create_data(name, str(tmp_path), split="lodo", test_domain=held, image_size=8, val_fraction=0.1,
                       progress=False)
    source = total - len(classes) * 5
    assert lodo.sizes() == {"train": source - round(source * 0.1), "val": round(source * 0.1),
                            "test": len(classes) * 5}
    # the held-out domain's pixel values (40·d + ...) appear only in the test split
    d = sorted(domains).index(held)
    assert set(lodo.test.images[:, 0, 0, 0].tolist()) == {40 * d + 10 * c + k for c in range(len(classes))
                                                          for k in range(5)}
    with pytest.raises(ConfigError, match=f"test_domain='nowhere' is not a domain of {name}"):
        create_data(name, str(tmp_path), split="lodo", test_domain="nowhere", image_size=8, progress=False)


def test_flowers102_reads_setid_and_imagelabels(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "flowers-102"
    for i in range(1, 11):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", i)
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 2, 3, 1, 2, 3, 102, 1, 2, 3]])})
    savemat(base / "setid.mat", {"trnid": np.array([[1, 2, 3, 4]]), "valid": np.array([[5, 6]]),
                                 "tstid": np.array([[7, 8, 9, 10]])})
    data = create_data("flowers102", str(tmp_path), image_size=8, progress=False)
    assert data.num_classes == 102 and data.sizes() == {"train": 4, "val": 2, "test": 4}
    assert data.test.labels.tolist() == [101, 0, 1, 2]


def test_dtd_reads_its_partition_files(tmp_path):
    base = tmp_path / "dtd" / "dtd"
    classes = ["banded", "blotchy", "zigzagged"]
    lines = {"train": [], "val": [], "test": []}
    for c, cls in enumerate(classes):
        for k, split in enumerate(["train", "train", "val", "test"]):
            write_image(base / "images" / cls / f"{cls}_{k}.jpg", 10 * c + k)
            lines[split].append(f"{cls}/{cls}_{k}.jpg")
    (base / "labels").mkdir(parents=True)
    for split, entries in lines.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(entries) + "\n")
    data = create_data("dtd", str(tmp_path), image_size=8, progress=False)
    assert data.num_classes == 3 and data.sizes() == {"train": 6, "val": 3, "test": 3}
    assert data.test.labels.tolist() == [0, 1, 2]


def test_fgvc_aircraft_reads_variant_annotations(tmp_path):
    base = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]
    base.mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    entries = {"train": [("001", 0), ("002", 1), ("003", 2)], "val": [("004", 2)], "test": [("005", 1), ("006", 2)]}
    for split, items in entries.items():
        for image_id, label in items:
            write_image(base / "images" / f"{image_id}.jpg", int(image_id))
        (base / f"images_variant_{split}.txt").write_text(
            "\n".join(f"{i} {variants[y]}" for i, y in items) + "\n")
    data = create_data("fgvc_aircraft", str(tmp_path), image_size=8, progress=False)
    assert data.num_classes == 3 and data.sizes() == {"train": 3, "val": 1, "test": 2}
    assert data.test.labels.tolist() == [1, 2]  # "Cessna 172" keeps its space


def test_imagenet_reads_image_folders(tmp_path):
    for split, count in (("train", 4), ("val", 1)):
        for c, cls in enumerate(["n0001", "n0002"]):
            for k in range(count):
                write_image(tmp_path / "imagenet" / split / cls / f"{k}.JPEG", c * 50 + k, size=(20, 14))
    data = create_data("imagenet", str(tmp_path), image_size=8, val_size=2, stream=False, progress=False)
    assert data.num_classes == 2 and data.sizes() == {"train": 6, "val": 2, "test": 2}
    assert data.image_size == (8, 8) and data.test.labels.tolist() == [0, 1]
    # streamed (the default): same splits, decoded batch by batch, identical evaluation pixels
    streamed = create_data("imagenet", str(tmp_path), image_size=8, val_size=2, workers=0)
    assert streamed.sizes() == data.sizes() and streamed.in_chans == 3 and streamed.image_size == (8, 8)
    (x, y), = list(streamed.loader("test", 4))
    (x_mem, y_mem), = list(data.loader("test", 4))
    assert torch.equal(y, y_mem) and torch.allclose(x, x_mem)
    first = [b[1].tolist() for b in streamed.loader("train", 3, seed=1)]
    again = [b[1].tolist() for b in streamed.loader("train", 3, seed=1)]
    assert first == again and sorted(sum(first, [])) == sorted(streamed.train.labels.tolist())
    x_aug, _ = next(iter(streamed.loader("train", 6, seed=1)))
    assert x_aug.shape == (6, 3, 8, 8) and torch.isfinite(x_aug).all()
    with pytest.raises(DataError, match="ImageNet not found: expected"):
        create_data("imagenet", str(tmp_path / "elsewhere"), progress=False)


def test_folder_datasets_missing_files_name_the_layout(tmp_path):
    with pytest.raises(DataError, match="Tiny-ImageNet not found"):
        create_data("tiny_imagenet", str(tmp_path))
    with pytest.raises(DataError, match=r"PACS not found: expected .*PACS/<domain>/<class>/<image>"):
        create_data("pacs", str(tmp_path))
    with pytest.raises(DataError, match="Flowers-102 not found: expected .*setid.mat"):
        create_data("flowers102", str(tmp_path))


def test_streamed_loader_keeps_its_workers_across_epochs_and_draws_what_one_process_draws(tmp_path):
    for c, cls in enumerate(["n0001", "n0002"]):
        for k in range(5):
            write_image(tmp_path / "imagenet" / "train" / cls / f"{k}.JPEG", c * 50 + k, size=(20, 14))
            write_image(tmp_path / "imagenet" / "val" / cls / f"{k}.JPEG", c * 50 + k, size=(20, 14))
    epochs = {}
    for workers in (0, 2):
        data = create_data("imagenet", str(tmp_path), image_size=8, val_size=2, workers=workers)
        loader = data.loader("train", 3, seed=4)
        seen = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            seen.append([(x.clone(), y.clone()) for x, y in loader])
        epochs[workers] = seen
        if workers:  # one DataLoader whose worker processes outlive the epoch
            assert loader._batches.persistent_workers and loader._batches._iterator is not None
    for one, many in zip(epochs[0], epochs[2]):  # same shuffles and crops, whatever the number of workers
        assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(one, many))
    assert [y.tolist() for _, y in epochs[0][0]] != [y.tolist() for _, y in epochs[0][1]]  # each epoch its own order
