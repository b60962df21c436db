"""Datasets: the bundled mnist5k split is fixed, stratified and disjoint; missing data gives one-line errors."""
import numpy as np
import pytest
import torch

from certifynet.data import dataset_info, get_dataset, mnist5k_split_indices
from certifynet.errors import CertifyNetError


def test_mnist5k_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 500)
    tr1, te1 = mnist5k_split_indices(labels)
    tr2, te2 = mnist5k_split_indices(labels)
    assert np.array_equal(tr1, tr2) and np.array_equal(te1, te2)
    assert len(tr1) == 4000 and len(te1) == 1000 and not set(tr1) & set(te1)
    assert np.bincount(labels[te1]).tolist() == [100] * 10


def test_mnist5k_real_digits_in_unit_range():
    train, test = get_dataset("mnist5k", "train"), get_dataset("mnist5k", "test")
    assert len(train) == 4000 and len(test) == 1000
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len({int(test[i][1]) for i in range(100)}) == 10  # the first 100 test digits cover every class
    assert torch.equal(get_dataset("mnist5k", "test")[5][0], test[5][0])


def test_dataset_info():
    assert dataset_info("cifar10").dim == 3072 and dataset_info("imagenet").num_classes == 1000
    with pytest.raises(CertifyNetError, match="unknown dataset"):
        dataset_info("svhn")


@pytest.mark.parametrize("name, flag", [("cifar10", "--download"), ("mnist", "--download"), ("imagenet", "--data-dir")])
def test_missing_data_names_the_flag(tmp_path, name, flag):
    """The CLI's message names the flag; the Python API's names the argument (data_dir, download)."""
    with pytest.raises(CertifyNetError) as e:
        get_dataset(name, "test", str(tmp_path))
    assert flag in e.value.render(cli=True)
    assert flag.lstrip("-").replace("-", "_") in str(e.value) and "--" not in str(e.value)
