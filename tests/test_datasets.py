"""ghn.datasets: IDX / CIFAR-pickle readers on tiny files written here, the real Fashion-MNIST when installed,
error messages, synthetic determinism, loaders and augmentation."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ghn.datasets import (
    CIFAR,
    STATS,
    FashionMNIST,
    ImageDataset,
    Synthetic,
    augment_batch,
    get_dataset,
    make_loader,
    read_idx,
)

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------------------------
# helpers that write tiny datasets in the official formats
# ---------------------------------------------------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    data = _idx_bytes(arr)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _write_fmnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(folder / f"{split}-images-idx3-ubyte", imgs, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz)
        out[split] = (imgs, labels)
    return out


def _write_cifar(root: Path, num_classes: int, per_file: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        key, meta, meta_key = b"labels", "batches.meta", b"label_names"
    else:
        folder = root / "cifar-100-python"
        files, key, meta, meta_key = ["train", "test"], b"fine_labels", "meta", b"fine_label_names"
    folder.mkdir(parents=True)
    written = {}
    for name in files:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, per_file)]
        d = {b"batch_label": name.encode(), b"data": data, key: labels, b"filenames": [b"x.png"] * per_file}
        if num_classes == 100:
            d[b"coarse_labels"] = [0] * per_file
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        written[name] = (data, labels)
    with open(folder / meta, "wb") as f:
        pickle.dump({meta_key: [f"class{i}".encode() for i in range(num_classes)]}, f, protocol=2)
    return folder, written


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST / IDX
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_tiny_idx(tmp_path, gz):
    raw = _write_fmnist(tmp_path / "fm", gz=gz)
    for train, split in ((True, "train"), (False, "t10k")):
        ds = FashionMNIST(tmp_path / "fm", train=train)
        imgs, labels = raw[split]
        assert len(ds) == len(labels) and ds.images.shape == (len(labels), 1, 28, 28)
        assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
        assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 1, 28)
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
        mean, std = STATS["fashion-mnist"]
        back = (ds.images[:, 0] * std[0] + mean[0]) * 255
        assert torch.allclose(back, torch.from_numpy(imgs).float(), atol=1e-3)
        x, y = ds[0]
        assert x.shape == (1, 28, 28) and int(y) == int(labels[0])


def test_fashion_mnist_root_from_env_and_parent(tmp_path, monkeypatch):
    _write_fmnist(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("GHN_FASHION_MNIST", str(tmp_path / "data" / "fashion-mnist"))
    assert len(FashionMNIST(None, train=True)) == 12
    assert len(get_dataset("fashion-mnist", str(tmp_path / "data"), train=False)) == 5  # parent folder


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        FashionMNIST(tmp_path / "nowhere")
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "apt-get install dataset-fashion-mnist" in msg
    # one file missing is also reported, not silently ignored
    _write_fmnist(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    FashionMNIST(tmp_path / "fm", train=True)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        FashionMNIST(tmp_path / "fm", train=False)


def test_idx_corrupt(tmp_path):
    _write_fmnist(tmp_path / "fm", gz=False)
    img = tmp_path / "fm" / "train-images-idx3-ubyte"
    good = img.read_bytes()
    img.write_bytes(b"\x00\x00\x09\x03" + good[4:])  # wrong type code
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
        FashionMNIST(tmp_path / "fm")
    img.write_bytes(good[:-7])  # truncated payload
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        FashionMNIST(tmp_path / "fm")
    img.write_bytes(good)
    lbl = tmp_path / "fm" / "train-labels-idx1-ubyte"
    lbl.write_bytes(_idx_bytes(np.zeros(3, np.uint8)))  # count mismatch with the images
    with pytest.raises(ValueError, match="labels"):
        FashionMNIST(tmp_path / "fm")
    gzf = tmp_path / "bad-idx3-ubyte.gz"
    gzf.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad-idx3-ubyte.gz"):
        read_idx(gzf)
    with pytest.raises(ValueError, match="dimensions"):
        read_idx(lbl, ndim=3)


def test_real_fashion_mnist():
    if not (REAL_FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    train, test = FashionMNIST(REAL_FMNIST, True, strict_counts=True), get_dataset("fashion-mnist", None, False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))
    # the fixed constants are the train split's statistics
    assert abs(train.images.mean().item()) < 1e-2 and abs(train.images.std().item() - 1) < 1e-2


# ---------------------------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_tiny(tmp_path, num_classes):
    folder, written = _write_cifar(tmp_path, num_classes)
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if num_classes == 10 else ["train"]
    test_file = "test_batch" if num_classes == 10 else "test"
    for root in (tmp_path, folder):  # parent folder or the cifar folder itself
        tr = CIFAR(root, num_classes=num_classes, train=True)
        te = get_dataset(f"cifar{num_classes}", str(root), train=False)
        assert len(tr) == 4 * len(train_files) and len(te) == 4
        assert (tr.num_classes, tr.in_channels, tr.image_size) == (num_classes, 3, 32)
        assert tr.images.dtype == torch.float32 and tr.labels.dtype == torch.int64
        labels = sum((written[f][1] for f in train_files), [])
        assert tr.labels.tolist() == labels and te.labels.tolist() == written[test_file][1]
        mean, std = STATS[f"cifar{num_classes}"]
        pix = written[train_files[0]][0].reshape(-1, 3, 32, 32)
        back = (tr.images[:4] * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255
        assert torch.allclose(back, torch.from_numpy(pix).float(), atol=1e-3)
        assert tr.classes[1] == "class1"


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        CIFAR(tmp_path, num_classes=10)
    assert "data_batch_1" in str(e.value) and "cifar-10-batches-py" in str(e.value)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        get_dataset("cifar100", str(tmp_path / "absent"), train=False)
    folder, _ = _write_cifar(tmp_path, 10)
    (folder / "data_batch_3").write_bytes(b"garbage, not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        CIFAR(tmp_path, 10, train=True)
    with open(folder / "test_batch", "wb") as f:  # wrong row length
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="test_batch.*3072"):
        CIFAR(tmp_path, 10, train=False)
    with open(folder / "test_batch", "wb") as f:  # a pickle that would import something else is refused
        pickle.dump({b"data": Path("x"), b"labels": []}, f)
    with pytest.raises(ValueError, match="test_batch"):
        CIFAR(tmp_path, 10, train=False)
    with pytest.raises(ValueError, match="10 or 100"):
        CIFAR(tmp_path, 20)


# ---------------------------------------------------------------------------------------------------------------
# synthetic, factory, loader, augmentation
# ---------------------------------------------------------------------------------------------------------------
def test_synthetic_deterministic_and_learnable():
    a = Synthetic(200, num_classes=4, in_channels=1, image_size=12, seed=3)
    b = get_dataset("synthetic", None, True, n=200, num_classes=4, in_channels=1, image_size=12, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert (a.num_classes, a.in_channels, a.image_size) == (4, 1, 12)
    c = Synthetic(200, num_classes=4, in_channels=1, image_size=12, seed=4)
    assert not torch.equal(a.images, c.images)
    test = Synthetic(100, num_classes=4, in_channels=1, image_size=12, seed=3, train=False)
    assert not torch.equal(test.images[:10], a.images[:10])
    # nearest class mean (from the train split) classifies the test split well above chance
    means = torch.stack([a.images[a.labels == k].mean(0) for k in range(4)]).flatten(1)
    pred = torch.cdist(test.images.flatten(1), means).argmin(1)
    assert (pred == test.labels).float().mean() > 0.8


def test_get_dataset_unknown():
    with pytest.raises(KeyError, match="fashion-mnist"):
        get_dataset("imagenet", None, True)


def test_make_loader_seeded():
    ds = Synthetic(50, num_classes=3, in_channels=3, image_size=8, seed=0)

    def epoch(seed, **kw):
        return [(x.clone(), y.clone()) for x, y in make_loader(ds, 16, True, seed, **kw)]

    state = torch.random.get_rng_state()
    e1, e2, e3 = epoch(1), epoch(1), epoch(2)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is neither read nor changed
    assert all(torch.equal(a[1], b[1]) for a, b in zip(e1, e2))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(e1, e3))
    assert [len(y) for _, y in e1] == [16, 16, 16, 2]
    assert [len(y) for _, y in make_loader(ds, 16, True, 1, drop_last=True)] == [16, 16, 16]
    assert sorted(torch.cat([y for _, y in e1]).tolist()) == sorted(ds.labels.tolist())
    x, y = next(iter(make_loader(ds, 50, shuffle=False)))
    assert torch.equal(x, ds.images) and torch.equal(y, ds.labels)
    a1, a2 = epoch(5, augment=True), epoch(5, augment=True)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a1, a2))
    # a plain (non tensor-backed) dataset goes through the per-item path
    plain = [(ds.images[i], ds.labels[i]) for i in range(10)]
    xb, yb = next(iter(make_loader(plain, 4, shuffle=False)))  # type: ignore[arg-type]
    assert torch.equal(xb, ds.images[:4]) and torch.equal(yb, ds.labels[:4])


def test_augment_batch():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, g, pad=0, flip=False), x)
    out = augment_batch(x, g, pad=2, flip=True)
    assert out.shape == x.shape
    for i in range(2):  # each output is a shifted (and maybe mirrored) window of the zero-padded input
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        windows = [padded[:, r:r + 5, c:c + 5] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_image_dataset_validation():
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 1, 4, 5), torch.zeros(2, dtype=torch.long), 2)
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.long), 2)
