#!/usr/bin/env python
"""Cost per input of the batched smoothed-classifier PGD against a plain loop of m forward passes.

Batched (`certifynet.attack.SmoothedPGD`): each step is one forward/backward pass of the m·B noisy copies of B
inputs.  Loop (how the attack is often written): per input and step, m separate forward passes of one noisy
copy each, p̂ summed over them, one backward.  Both run the same T steps with the same noise and reach the same
point (checked).  Each repeat times both side by side; the ratio is the median over repeats.

  python benchmarks/bench_attack.py                               # LeNet on MNIST size, m=32, T=10
  python benchmarks/bench_attack.py --arch cifar_resnet20 --dataset cifar10 --inputs 8
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from certifynet.attack import SmoothedPGD
from certifynet.data import dataset_info
from certifynet.models import get_architecture
from certifynet.noise import GaussianNoise
from certifynet.sampling import STREAM_ATTACK, input_generator
from certifynet.training.losses import _project

PATH_TOLERANCE = 2e-3  # max pixel gap between the two attacks' end points


def loop_attack(model, x, y, noises, steps, eps):
    """The plain version: per input, m forward passes of one noisy copy per step (noises: (m, B, ...))."""
    out = []
    for b in range(x.shape[0]):
        xb, x_t = x[b:b + 1], x[b:b + 1]
        for _ in range(steps):
            x_t = x_t.detach().requires_grad_(True)
            p_hat = sum(torch.softmax(model(x_t + noises[i, b:b + 1]), -1) for i in range(noises.shape[0]))
            nll = -(p_hat[0, y[b]] / noises.shape[0]).clamp_min(1e-20).log()
            (g,) = torch.autograd.grad(nll, [x_t])
            x_t = _project(x_t.detach() + (2 * eps / steps) * g / g.norm().clamp_min(1e-12), xb, eps)
        out.append(x_t.detach())
    return torch.cat(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lenet")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--inputs", type=int, default=16, help="inputs B attacked together (batched: m·B per pass)")
    p.add_argument("--eps", type=float, default=0.5)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    info = dataset_info(a.dataset)
    model = get_architecture(a.arch, a.dataset).eval()
    x = torch.rand(a.inputs, *info.shape)
    y = torch.randint(0, info.num_classes, (a.inputs,))
    attacker = SmoothedPGD(model, GaussianNoise(a.sigma), a.m, a.steps, seed=0, device="cpu")
    idxs = list(range(a.inputs))
    # the same draws for both: the batched attack's own first-restart noise
    noises = attacker._draw([input_generator(0, i, STREAM_ATTACK, "cpu") for i in idxs], x)
    batched_t, loop_t = [], []
    for r in range(a.repeats + 1):  # the first round warms up and is not counted
        t = time.perf_counter()
        res = attacker.attack(x, y, a.eps, idxs)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        ref = loop_attack(model, x, y, noises, a.steps, a.eps)
        tl = time.perf_counter() - t
        if r:
            batched_t.append(tb / a.inputs)
            loop_t.append(tl / a.inputs)
    # the batched attack also spends m forward passes choosing among restarts; its path equals the loop's
    # float32 sums over m·B rows vs m single rows differ in the last bits, and T normalised steps carry that on
    gap = float((res.x_adv - ref).abs().max())
    assert gap <= PATH_TOLERANCE, f"batched and loop attacks end {gap:.2e} apart (> {PATH_TOLERANCE})"
    ratios = [lo / ba for lo, ba in zip(loop_t, batched_t)]
    print(f"same end point: max |x_batched − x_loop| = {gap:.1e} (pixels in [0,1])")
    print(f"{a.arch} ({a.dataset} inputs), m={a.m}, T={a.steps}, B={a.inputs} inputs per batch, {a.threads} thread(s), "
          f"{a.repeats} repeats")
    print(f"  batched: {statistics.median(batched_t) * 1e3:.1f} ms/input ({a.steps} forward/backward passes of "
          f"{a.m * a.inputs} copies per batch)")
    print(f"  loop:    {statistics.median(loop_t) * 1e3:.1f} ms/input ({a.m * a.steps} forward passes of 1 copy "
          f"per input)")
    print(f"  speed-up (loop / batched): median {statistics.median(ratios):.2f}× "
          f"(per repeat: {', '.join(f'{q:.2f}' for q in ratios)})")


if __name__ == "__main__":
    main()
