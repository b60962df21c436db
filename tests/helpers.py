"""Shared test helpers: the vendored reference data, benchmark modules loaded by path, models with known
properties (a linear classifier with an exact robust radius; one computed exactly, whose rows cannot depend on
their batch), and a subprocess that stalls after a given number of log rows (to kill it at a known point)."""
from __future__ import annotations

import csv
import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


@functools.cache
def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, loaded by its path (sys.path untouched; tests never import benchmarks
    any other way, and benchmarks never import tests). Registered as `benchmarks_<name>` in sys.modules."""
    path = BENCHMARKS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # before exec: dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


_reference = load_benchmark("reference_data")
REFERENCE: Path = _reference.REFERENCE                 # tests/data/reference
cohen_cifar10_population = _reference.cohen_cifar10_population
COHEN_C10_S050_Z = _reference.COHEN_C10_S050_Z


def reference_file(name: str) -> Path:
    """tests/data/reference/<name>. A core check whose data is missing fails here; it never skips."""
    try:
        return _reference.reference_file(name)
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


def reference_rows(name: str) -> list[dict]:
    """The rows of a vendored CSV file as dicts (lines starting with '#' are comments)."""
    with open(reference_file(name), newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    if not rows:
        pytest.fail(f"reference data {name} has no rows", pytrace=False)
    return rows


class LinearBinary(nn.Module):
    """f(x) = 1[w·x > 0] with ‖w‖ = 1, as 2-class logits [0, w·x]. Under any radially symmetric noise the
    smoothed classifier at x = δ·w has true robust radius δ (the distance to the hyperplane)."""

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        w = torch.randn(d, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("w", w / w.norm())

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(s), s], 1)

    def point_at(self, dist: float, shape):
        return (dist * self.w).reshape(shape)


class ExactLinear(nn.Module):
    """A K-class linear classifier computed exactly: logits = W·round(256·x) in float64, W small integers.

    Every product and partial sum is an integer of magnitude below 2^53 (|256·x| ≲ 10³ for inputs in [0, 1]
    plus noise of σ ≤ 1, |W| ≤ 8, d ≤ 10⁴ terms: < 10⁸), so float64 adds them without rounding in any order:
    no kernel, summation order, batch size or thread count can change a row's logits. Its rows are independent
    of their batch by construction, for tests of bookkeeping that must not rest on one CPU's float32 kernels."""

    def __init__(self, d: int, classes: int = 10, seed: int = 0):
        super().__init__()
        w = torch.randint(-8, 9, (d, classes), generator=torch.Generator().manual_seed(seed))
        self.register_buffer("w", w.double())

    def forward(self, x):
        return torch.round(x.flatten(1).double() * 256) @ self.w


def cuda_test(fn):
    """Mark a test `cuda` (benchmarks/gpu_check.sh runs these) and skip it, with the reason, without CUDA."""
    reason = "needs a CUDA device (benchmarks/gpu_check.sh runs the cuda-marked tests on a GPU)"
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason=reason)(fn))


def untrained_lenet(path, sigma=0.25, seed=0) -> str:
    """Save an untrained mnist5k LeNet checkpoint (weights from torch seed `seed`, trained-σ `sigma`) at `path`;
    returns the path. Another seed gives another model (another SHA-256)."""
    from certifynet.models import get_architecture, save_checkpoint
    torch.manual_seed(seed)
    save_checkpoint(str(path), get_architecture("lenet", "mnist5k"), arch="lenet", dataset="mnist5k", num_classes=10,
                    sigma=sigma)
    return str(path)



def trained_lenet(path) -> str:
    """Train an mnist5k LeNet for one epoch under σ = 0.25 noise (Adam, batches of 100, seed 0; a few seconds on
    the CPU) and save it at `path`: digits from all-hit to abstaining, as in the quickstart. Returns the path."""
    import torch.nn.functional as F

    from certifynet.data import get_dataset
    from certifynet.models import get_architecture, save_checkpoint
    torch.manual_seed(0)
    x, y = get_dataset("mnist5k", "train").tensors
    model, gen = get_architecture("lenet", "mnist5k"), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    perm = torch.randperm(len(x), generator=gen)
    for k in range(0, len(x), 100):
        b = perm[k:k + 100]
        loss = F.cross_entropy(model(x[b] + 0.25 * torch.randn(x[b].shape, generator=gen)), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(str(path), model.eval(), arch="lenet", dataset="mnist5k", num_classes=10, sigma=0.25)
    return str(path)

STALLED = "stalled-after-rows"
_STALL = """\
import runpy, sys, time
try:
    import certifynet
except ImportError:  # as the scripts do
    sys.path.insert(0, {src!r})
from certifynet.records import RowLog
_write, _count = RowLog.write, [0]
def write(self, row):
    _write(self, row)
    _count[0] += 1
    if _count[0] == {rows}:
        print({marker!r}, flush=True)
        time.sleep(3600)
RowLog.write = write
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def start_stalling(script, argv, rows: int, env=None, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """Start `python script argv` so that it stops (sleeps, holding its files and lock) right after writing its
    `rows`-th log row in this run, and return once it has: the caller then kills it at a known point, with no
    race against how fast this machine runs. Fails the test if the process ends first."""
    code = _STALL.format(rows=int(rows), marker=STALLED, script=os.fspath(script), src=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
    for line in proc.stdout:       # blocks until the marker, or EOF when the process ends first
        if line.strip() == STALLED:
            return proc
    proc.wait()
    pytest.fail(f"{script} ended (exit {proc.returncode}) before writing {rows} rows", pytrace=False)
