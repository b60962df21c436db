#!/usr/bin/env python
"""Sampler throughput: Certify-Net's `Sampler` vs a plain Cohen-style loop, same model and inputs, one run.

Reference loop (as in Cohen et al.'s `core.py`): per batch `x.repeat(b,1,1,1)`, `randn_like(batch) * σ`,
fp32, under `torch.no_grad()` (not inference_mode), argmax moved to the host and counted in numpy.
Prints noisy forward passes per second for both, and their ratio (median over --repeats rounds).
Ours runs with the library defaults: channels_last, plus a frozen TorchScript trace on the CPU or bf16
autocast on CUDA.

  python benchmarks/bench_sampler.py [--arch lenet --dataset mnist5k] [--N 20000 --batch 1000]
"""
import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from certifynet.data import dataset_info  # noqa: E402
from certifynet.models import get_architecture  # noqa: E402
from certifynet.noise import GaussianNoise  # noqa: E402
from certifynet.sampling import Sampler, input_generator, resolve_device  # noqa: E402


def reference_counts(model, x, sigma, n, batch, num_classes):
    """Cohen-style sampling loop (the baseline)."""
    counts = np.zeros(num_classes, dtype=int)
    with torch.no_grad():
        remaining = n
        while remaining > 0:
            b = min(batch, remaining)
            rep = x.repeat((b, 1, 1, 1))
            noise = torch.randn_like(rep) * sigma
            pred = model(rep + noise).argmax(1)
            counts += np.bincount(pred.cpu().numpy(), minlength=num_classes)
            remaining -= b
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lenet")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--N", type=int, default=20000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--inputs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    device = resolve_device(a.device)
    info = dataset_info(a.dataset)
    torch.manual_seed(0)
    model = get_architecture(a.arch, a.dataset).to(device).eval()
    ours_model = copy.deepcopy(model)  # the Sampler converts its model to channels_last in place
    xs = torch.rand(a.inputs, *info.shape, device=device)
    cuda = device.type == "cuda"
    ours = Sampler(ours_model, info.num_classes, a.batch, device, amp=cuda)  # library defaults
    noise = GaussianNoise(0.25)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run_ref():
        for x in xs:
            reference_counts(model, x.unsqueeze(0), 0.25, a.N, a.batch, info.num_classes)

    def run_ours():
        for i, x in enumerate(xs):
            ours.counts_np(x, noise, a.N, input_generator(0, i, 1, device))

    run_ref(), run_ours()  # warm-up
    rates = {"reference": [], "certifynet": []}
    for _ in range(a.repeats):  # interleave so machine noise hits both alike
        for name, fn in (("reference", run_ref), ("certifynet", run_ours)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            rates[name].append(a.inputs * a.N / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"device={device} arch={a.arch} N={a.N} batch={a.batch} inputs={a.inputs} repeats={a.repeats} "
          f"threads={torch.get_num_threads()}")
    for k, v in med.items():
        print(f"{k:>11}: {v:12,.0f} noisy forward passes/s (median)")
    print(f"ratio certifynet/reference: {med['certifynet'] / med['reference']:.2f}x")


if __name__ == "__main__":
    main()
