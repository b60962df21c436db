"""Every test starts from the same global RNG state, so a pass or a failure reproduces in any order.

Hypothesis (the CLI fuzzer, tests/test_fuzz.py) runs under the profile `$HYPOTHESIS_PROFILE`: `ci` by default
(derandomized: the same examples on every run, no example database written), `explore` for new random examples."""
import os
import random

import numpy as np
import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_global_rngs():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread for tiny tensors: avoids OpenMP oversubscription stalls on shared CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
