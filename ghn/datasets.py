"""In-memory image datasets for training and evaluating predicted networks. Nothing is ever downloaded.

* :class:`FashionMNIST` reads the four IDX files (``.gz`` or uncompressed). Looked for in ``root``, then
  ``$GHN_FASHION_MNIST``, a repo-local ``.datasets/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist``
  (Debian: ``apt-get install dataset-fashion-mnist``).
* :class:`CIFAR` reads the CIFAR-10/100 "python version" pickles from a local folder (``$GHN_CIFAR10`` /
  ``$GHN_CIFAR100`` or ``.datasets/`` when no root is given).
* :class:`Synthetic` makes random but learnable images; for fast tests only, never for accuracy claims.

Each dataset holds ``.images`` (float32, N x C x H x W, normalised per channel with fixed train-split constants),
``.labels`` (int64), ``.num_classes``, ``.in_channels`` and ``.image_size``; indexing gives ``(image, label)``.
:func:`make_loader` batches one with an explicitly seeded generator (no global RNG is read or changed).
"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

__all__ = ["ImageDataset", "FashionMNIST", "CIFAR", "Synthetic", "get_dataset", "make_loader", "augment_batch",
           "read_idx", "DATASET_NAMES"]

PathLike = Union[str, "os.PathLike[str]"]

# Per-channel mean/std of the *training* splits (pixel values in [0, 1]); used for both splits.
STATS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_REPO_DATASETS = Path(__file__).resolve().parents[1] / ".datasets"


class ImageDataset(Dataset):
    """A labelled image tensor pair (TensorDataset-like) with its task's metadata."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, name: str = "",
                 mean: Sequence[float] = (), std: Sequence[float] = (), classes: Optional[Sequence[str]] = None):
        if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be N x C x H x H, got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        self.images = images.float()
        self.labels = labels.long()
        self.num_classes = int(num_classes)
        self.name = name
        self.mean, self.std = tuple(mean), tuple(std)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, n={len(self)}, classes={self.num_classes}, "
                f"shape={tuple(self.images.shape[1:])})")


def _normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 normalised per channel."""
    pixels = np.ascontiguousarray(pixels)
    if not pixels.flags.writeable:  # np.frombuffer views are read-only; torch wants writable memory
        pixels = pixels.copy()
    x = torch.from_numpy(pixels).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


# ================================================================================================================
# Fashion-MNIST (IDX files)
# ================================================================================================================
_IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_FMNIST_COUNTS = {True: 60000, False: 10000}


def read_idx(path: PathLike, ndim: Optional[int] = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzip or raw); ``ValueError`` naming the file if it is malformed."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # BadGzipFile is an OSError; EOFError: truncated
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable (gzip) IDX file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty)'} (expected 000008xx: "
                         "unsigned-byte IDX)")
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise ValueError(f"{path}: IDX file has {nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX payload has {len(raw) - header} bytes, header {dims} says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_candidates(root: Optional[PathLike]) -> List[Path]:
    if root is not None:
        base = Path(root).expanduser()
        return [base, base / "fashion-mnist", base / "FashionMNIST" / "raw"]
    out: List[Path] = []
    env = os.environ.get("GHN_FASHION_MNIST")
    if env:
        out.append(Path(env).expanduser())
    out += [_REPO_DATASETS / "fashion-mnist", Path.cwd() / ".datasets" / "fashion-mnist",
            Path("/usr/share/datasets/fashion-mnist")]
    return list(dict.fromkeys(out))


class FashionMNIST(ImageDataset):
    """Fashion-MNIST, 1 x 28 x 28, 10 classes (60,000 train / 10,000 test) from the IDX files.

    ``root`` (or, when None: ``$GHN_FASHION_MNIST``, ``.datasets/fashion-mnist`` in the repo or the working
    directory, ``/usr/share/datasets/fashion-mnist``) must hold ``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``.
    ``strict_counts`` also checks the official sizes (off by default so subsets in the same format load).
    """

    def __init__(self, root: Optional[PathLike] = None, train: bool = True, strict_counts: bool = False):
        img_stem, lbl_stem = _IDX_FILES[bool(train)]
        tried = _fashion_candidates(root)
        for folder in tried:
            img_path, lbl_path = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
            if img_path is not None and lbl_path is not None:
                break
        else:
            raise FileNotFoundError(
                f"Fashion-MNIST {'train' if train else 'test'} split not found: need {img_stem}[.gz] and "
                f"{lbl_stem}[.gz] in one of: {', '.join(str(p) for p in tried)}. Install it with "
                "`apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist), or put "
                "the four IDX files in a folder and pass it as root / set GHN_FASHION_MNIST. Nothing is downloaded.")
        images = read_idx(img_path, ndim=3)
        labels = read_idx(lbl_path, ndim=1)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{img_path} has {images.shape[0]} images but {lbl_path} has {labels.shape[0]} labels")
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{img_path}: images are {images.shape[1:]}, expected 28 x 28")
        if labels.size and int(labels.max()) >= 10:
            raise ValueError(f"{lbl_path}: label {int(labels.max())} out of range 0..9")
        if strict_counts and images.shape[0] != _FMNIST_COUNTS[bool(train)]:
            raise ValueError(f"{img_path}: {images.shape[0]} images, expected {_FMNIST_COUNTS[bool(train)]}")
        mean, std = STATS["fashion-mnist"]
        super().__init__(_normalize(images[:, None], mean, std), torch.from_numpy(labels.astype(np.int64)), 10,
                         "fashion-mnist", mean, std, FASHION_MNIST_CLASSES)
        self.root = img_path.parent


# ================================================================================================================
# CIFAR-10 / CIFAR-100 (python pickles)
# ================================================================================================================
def _numpy_attr(module: str, name: str) -> Any:
    if module == "numpy":
        return getattr(np, name)
    try:  # numpy >= 2 moved numpy.core to numpy._core
        import numpy._core.multiarray as ma  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - numpy < 2
        import numpy.core.multiarray as ma  # type: ignore[no-redef]
    return getattr(ma, name)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and numpy arrays (CIFAR pickles need nothing else)."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return _numpy_attr(module, name)
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> Dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, not a pickle, foreign classes, ...
        raise ValueError(f"{path}: not a CIFAR python-version pickle: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


_CIFAR_DIRS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}


def _cifar_files(num_classes: int, train: bool) -> List[str]:
    if num_classes == 10:
        return [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return ["train"] if train else ["test"]


def _cifar_candidates(root: Optional[PathLike], num_classes: int) -> List[Path]:
    sub = _CIFAR_DIRS[num_classes]
    bases: List[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    else:
        env = os.environ.get(f"GHN_CIFAR{num_classes}") or os.environ.get("GHN_CIFAR")
        if env:
            bases.append(Path(env).expanduser())
        bases += [_REPO_DATASETS, Path.cwd() / ".datasets"]
    out: List[Path] = []
    for b in bases:
        out += [b, b / sub, b / f"cifar{num_classes}", b / f"cifar{num_classes}" / sub]
    return list(dict.fromkeys(out))


class CIFAR(ImageDataset):
    """CIFAR-10 or CIFAR-100 (fine labels), 3 x 32 x 32, from the "python version" pickle files.

    ``root`` may be the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` or that folder itself;
    when None, ``$GHN_CIFAR10`` / ``$GHN_CIFAR100`` (or ``$GHN_CIFAR``) and ``.datasets/`` are searched.
    CIFAR-10 needs ``data_batch_1..5`` (train) / ``test_batch`` (test); CIFAR-100 needs ``train`` / ``test``.
    """

    def __init__(self, root: Optional[PathLike] = None, num_classes: int = 10, train: bool = True):
        if num_classes not in _CIFAR_DIRS:
            raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
        files = _cifar_files(num_classes, bool(train))
        tried = _cifar_candidates(root, num_classes)
        folder = next((p for p in tried if all((p / f).is_file() for f in files)), None)
        if folder is None:
            raise FileNotFoundError(
                f"CIFAR-{num_classes} {'train' if train else 'test'} split not found: need {', '.join(files)} "
                f"(python version, folder {_CIFAR_DIRS[num_classes]}) in one of: "
                f"{', '.join(str(p) for p in tried)}. Nothing is downloaded: get the CIFAR-{num_classes} python "
                f"version archive yourself, extract it into a local folder and pass that folder as root (or set "
                f"GHN_CIFAR{num_classes}).")
        label_key = b"labels" if num_classes == 10 else b"fine_labels"
        datas, labels = [], []
        for name in files:
            d = _load_pickle(folder / name)
            if b"data" not in d or label_key not in d:
                raise ValueError(f"{folder / name}: missing key b'data' or {label_key!r} "
                                 f"(found {sorted(d)}); is this CIFAR-{num_classes}?")
            data = np.asarray(d[b"data"])
            lab = np.asarray(d[label_key], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{folder / name}: data must be uint8 N x 3072, got {data.dtype} {data.shape}")
            if lab.shape != (data.shape[0],):
                raise ValueError(f"{folder / name}: {data.shape[0]} images but {lab.shape[0]} labels")
            if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
                raise ValueError(f"{folder / name}: labels out of range 0..{num_classes - 1}")
            datas.append(data)
            labels.append(lab)
        pixels = np.concatenate(datas).reshape(-1, 3, 32, 32)
        mean, std = STATS[f"cifar{num_classes}"]
        super().__init__(_normalize(pixels, mean, std), torch.from_numpy(np.concatenate(labels)), num_classes,
                         f"cifar{num_classes}", mean, std, self._class_names(folder, num_classes))
        self.root = folder

    @staticmethod
    def _class_names(folder: Path, num_classes: int) -> Optional[List[str]]:
        meta, key = ("batches.meta", b"label_names") if num_classes == 10 else ("meta", b"fine_label_names")
        if not (folder / meta).is_file():
            return None
        names = _load_pickle(folder / meta).get(key)
        if not isinstance(names, (list, tuple)) or len(names) != num_classes:
            return None
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


# ================================================================================================================
# synthetic
# ================================================================================================================
class Synthetic(ImageDataset):
    """Random but learnable images: a smooth per-class prototype plus Gaussian noise. FOR TESTS ONLY.

    The prototypes depend on ``seed`` only, so the train and test splits of one seed share classes; the
    samples differ between splits. Accuracy on this data says nothing about real tasks.
    """

    def __init__(self, n: int = 1024, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 seed: int = 0, train: bool = True, noise: float = 1.0):
        if n <= 0 or num_classes <= 0 or in_channels <= 0 or image_size <= 0:
            raise ValueError("n, num_classes, in_channels and image_size must be positive")
        g = torch.Generator().manual_seed(int(seed))
        low = max(2, image_size // 8)
        protos = torch.randn(num_classes, in_channels, low, low, generator=g)
        protos = F.interpolate(protos, size=(image_size, image_size), mode="bilinear", align_corners=False)
        protos = (protos - protos.mean()) / protos.std().clamp_min(1e-6)
        gs = torch.Generator().manual_seed(int(seed) * 2 + (0 if train else 1) + 1_000_003)
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gs)]
        images = protos[labels] + noise * torch.randn(n, in_channels, image_size, image_size, generator=gs)
        images = images / (1.0 + noise ** 2) ** 0.5
        super().__init__(images, labels, num_classes, "synthetic", (0.0,) * in_channels, (1.0,) * in_channels)


# ================================================================================================================
# factory, loader, augmentation
# ================================================================================================================
DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "synthetic")
_NAME_ALIASES = {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
                 "cifar10": "cifar10", "cifar-10": "cifar10", "cifar100": "cifar100", "cifar-100": "cifar100",
                 "synthetic": "synthetic", "synth": "synthetic"}


def get_dataset(name: str, root: Optional[PathLike] = None, train: bool = True, **kw: Any) -> ImageDataset:
    """Load ``fashion-mnist`` | ``cifar10`` | ``cifar100`` | ``synthetic`` (extra kwargs go to its class)."""
    key = _NAME_ALIASES.get(name.strip().lower().replace("_", "-"))
    if key is None:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(DATASET_NAMES)}")
    if key == "fashion-mnist":
        return FashionMNIST(root, train=train, **kw)
    if key in ("cifar10", "cifar100"):
        return CIFAR(root, num_classes=10 if key == "cifar10" else 100, train=train, **kw)
    kw.setdefault("n", 2048 if train else 512)
    return Synthetic(train=train, **kw)


def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True
                  ) -> torch.Tensor:
    """Random crop (zero padding of ``pad``, i.e. the mean after normalisation) and horizontal flip, per sample."""
    b, c, h, w = images.shape
    x = images
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]  # B x H x 1
        cols = (ox[:, None] + torch.arange(w))[:, None, :]  # B x 1 x W
        x = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # B x H x W x C -> BCHW
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


class _Collate:
    """Stack ``(image, label)`` pairs (or pass a pre-batched pair); optionally augment with a private generator."""

    def __init__(self, augment: bool, seed: int, batched: bool):
        self.batched = batched
        self.generator = torch.Generator().manual_seed(int(seed) + 1) if augment else None

    def __call__(self, items: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.batched:
            x, y = items
        else:
            x = torch.stack([i[0] for i in items])
            y = torch.stack([torch.as_tensor(i[1]) for i in items])
        if self.generator is not None:
            x = augment_batch(x, self.generator)
        return x, y


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False, augment: bool = False) -> DataLoader:
    """A single-process DataLoader whose order (and augmentation) depends only on ``seed``.

    Tensor-backed datasets (``ImageDataset``, ``TensorDataset``) are indexed a whole batch at a time.
    ``augment`` applies :func:`augment_batch` (random crop with 4 px padding + horizontal flip).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    g = torch.Generator().manual_seed(int(seed))
    sampler: Sampler = RandomSampler(dataset, generator=g) if shuffle else SequentialSampler(dataset)
    # each iteration draws a base seed from the loader's generator, else from the global RNG: a separate one keeps
    # the global state untouched and the sampler's stream (hence every data order) as it was
    base = torch.Generator().manual_seed(int(seed))
    if hasattr(dataset, "tensors"):
        return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None,
                          num_workers=0, collate_fn=_Collate(augment, seed, batched=True), generator=base)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=0,
                      collate_fn=_Collate(augment, seed, batched=False), generator=base)
