"""Every test starts from the same global RNG state, so a pass or a failure reproduces in any order."""
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_global_rngs():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
