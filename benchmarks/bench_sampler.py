#!/usr/bin/env python
"""Sampler throughput: Certify-Net's `Sampler` vs a plain Cohen-style loop, same model and inputs, one run,
and both against the hardware's own limit.

Reference loop (as in Cohen et al.'s `core.py`): per batch `x.repeat(b,1,1,1)`, `randn_like(batch) * σ`,
fp32, under `torch.no_grad()` (not inference_mode), argmax moved to the host and counted in numpy.
Ours runs with the library defaults (channels_last, plus a frozen TorchScript trace on the CPU), in fp32
and, on CUDA, in bf16 autocast, each also with --cuda-graph when asked. Each variant's noisy forward
passes per second are the median over --repeats interleaved rounds (machine noise hits all alike).

Hardware limit: FLOPs per forward pass (torch.utils.flop_counter, convolutions and matmuls) × passes/s, as
a fraction of the dense matmul throughput torch reaches on the same device in the same run (fp32 on the CPU;
on CUDA bf16, and for fp32 models TF32 when cuDNN convolutions run in TF32, as they do by default).

The selection pass (N0 draws per input, e.g. 100) is timed input by input and with --inputs-per-batch K
inputs sharing forward passes (Sampler.counts_many). --baseline-sampling FILE times the Sampler of another
revision side by side (`git show REV:src/certifynet/sampling.py > /tmp/old.py`): the no-slowdown check.
On a shared CPU, `--clock process` counts passes per CPU second of this process (steadier than wall time).

`--composed NAME` times a denoise-then-classify model of benchmarks/bench_diffusion_speed.py instead of --arch
(random weights): `ddpm+lenet` (the mnist5k DDPM's UNet + LeNet, one shot), `ddpm-cifar10+resnet110` (a UNet
shaped like google/ddpm-cifar10-32 + ResNet-110), `ddpm-cifar10+vit224` (the same UNet + ViT-B/16 at 224, resized
on the device: Carlini et al.'s CIFAR-10 pipeline), ...; `--tiny` at toy width. Their FLOPs count the UNet's and the
classifier's convolutions and linear layers (attention products excluded). `--eager` also times the Sampler
without its CPU trace (slower than eager for the UNets, docs/diffusion.md).

  python benchmarks/bench_sampler.py [--arch lenet --dataset mnist5k] [--N 20000 --batch 1000] [--json OUT]
  python benchmarks/bench_sampler.py --composed ddpm+lenet --N 2000 --batch 500 --eager --clock process
"""
import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from certifynet.data import dataset_info
from certifynet.models import get_architecture
from certifynet.noise import GaussianNoise
from certifynet.sampling import STREAM_P, STREAM_SELECT, Sampler, input_generator, resolve_device

SIGMA = 0.25
N_CERTIFY = 100_000  # seconds per input are quoted for Cohen's N0 = 100 + N = 100,000


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


def flops_per_pass(model, shape) -> float:
    """FLOPs of one forward pass: 2 per multiply-add of every convolution (transposed too) and linear layer,
    read off forward hooks on the meta device (no arithmetic; the same number torch.utils.flop_counter gives
    for these models, tests/test_gpu_check.py checks, without its ~2 s torch._dynamo import)."""
    meta = copy.deepcopy(model).to("meta")
    macs = []

    def hook(m, inputs, out):
        if isinstance(m, torch.nn.Linear):
            macs.append(inputs[0].numel() // m.in_features * m.in_features * m.out_features)
        elif isinstance(m, torch.nn.modules.conv._ConvTransposeNd):
            macs.append(inputs[0].numel() * m.out_channels // m.groups * math.prod(m.kernel_size))
        else:
            macs.append(out.numel() * m.in_channels // m.groups * math.prod(m.kernel_size))
    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            meta(torch.empty(2, *shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return 2 * sum(macs) / 2


def matmul_peak(device, dtype, tf32=False, n=None, reps=None, clock=time.perf_counter) -> float:
    """Dense n×n matmul throughput (FLOP per second of `clock`, median of reps) torch reaches on `device`."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    reps = reps or (10 if cuda else 5)
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    flag = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        times = []
        for i in range(reps + 2):
            sync(device)
            t = clock()
            torch.mm(a, b)
            sync(device)
            if i >= 2:  # warm-up
                times.append(clock() - t)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flag
    return 2 * n ** 3 / statistics.median(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peaks(device, clock="wall") -> dict:
    """Matmul peaks by precision name; 'fp32_models' names the one an fp32 model's convolutions run in."""
    if device.type != "cuda":
        tick = time.process_time if clock == "process" else time.perf_counter
        return {"fp32": matmul_peak(device, torch.float32, clock=tick), "fp32_models": "fp32"}
    out = {"fp32": matmul_peak(device, torch.float32), "tf32": matmul_peak(device, torch.float32, tf32=True),
           "bf16": matmul_peak(device, torch.bfloat16)}
    out["fp32_models"] = "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    return out


def load_baseline(path):
    """The `Sampler` class of another revision's sampling.py (imported under another module name)."""
    spec = importlib.util.spec_from_file_location("baseline_sampling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Sampler


class Timer:
    """Interleaved rounds of named variants; passes/s per round, medians at the end. `clock` 'process'
    counts this process's CPU seconds instead of wall seconds (steadier on a shared CPU; CPU only)."""

    def __init__(self, device, deadline, clock="wall"):
        self.device, self.deadline, self.runs = device, deadline, {}
        self.clock = time.process_time if clock == "process" else time.perf_counter

    def time(self, name, fn, passes):
        sync(self.device)
        t = self.clock()
        fn()
        sync(self.device)
        self.runs.setdefault(name, []).append(passes / (self.clock() - t))

    def median(self, name):
        return statistics.median(self.runs[name])

    def out_of_time(self):
        return time.monotonic() > self.deadline


def run(a) -> dict:
    """Measure every variant; returns (and, with --json, keeps writing) the results dict."""
    device = resolve_device(a.device)
    cuda = device.type == "cuda"
    if not a.composed:
        info = dataset_info(a.dataset)
        shape, k = tuple(info.shape), info.num_classes
    deadline = time.monotonic() + a.max_seconds
    if cuda and a.clock == "process":
        raise SystemExit("--clock process measures CPU seconds: CUDA work runs asynchronously, use --clock wall")
    torch.manual_seed(0)
    if a.composed:
        model, shape, k = composed_model(a.composed, a.tiny)
        a.arch, a.dataset = a.composed + (" (tiny)" if a.tiny else ""), None
    else:
        model = get_architecture(a.arch, a.dataset).eval()
    ref_model = copy.deepcopy(model).to(device)  # the Cohen loop's own (NCHW, fp32) copy
    xs = [torch.rand(shape, generator=torch.Generator().manual_seed(i)) for i in range(a.inputs)]
    noise = GaussianNoise(SIGMA)
    res = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "arch": a.arch, "dataset": a.dataset,
           "shape": list(shape), "N": a.N, "batch": a.batch, "inputs": a.inputs, "sigma": SIGMA, "clock": a.clock,
           "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if cuda else None}
    save(a, res)
    res["flops_per_pass"] = flops_per_pass(model, shape)
    res["peak_flops"] = peaks(device, a.clock)
    save(a, res)

    precisions = ["fp32", "bf16"] if cuda else ["fp32"]
    if cuda and a.precision != "both":
        precisions = [a.precision]
    variants = {"reference": (lambda: [reference_counts(ref_model, x.to(device).unsqueeze(0), SIGMA, a.N, a.batch, k)
                                       for x in xs], "fp32")}
    for prec in precisions:
        for graph in ([False, True] if (cuda and a.cuda_graph) else [False]):
            s = Sampler(model, k, a.batch, device, amp=prec == "bf16", cuda_graph=graph)
            name = f"certifynet {prec}" + (" graph" if graph else "")
            variants[name] = (_ours(s, xs, noise, a.N, device), prec)
    if a.eager and not cuda:
        variants["certifynet fp32 eager"] = (_ours(Sampler(model, k, a.batch, device, optimize=False), xs, noise,
                                                   a.N, device), "fp32")
    if a.baseline_sampling:
        old = load_baseline(a.baseline_sampling)(copy.deepcopy(model), k, a.batch, device,  # it converts in place
                                                 precisions[-1] == "bf16")
        variants["baseline (old sampling.py)"] = (_ours(old, xs, noise, a.N, device), precisions[-1])
    timer = Timer(device, deadline, a.clock)
    for fn, _ in variants.values():  # warm-up: traces, graphs, cuDNN autotuning, allocator
        fn()
    for r in range(a.repeats):
        for name, (fn, _) in variants.items():
            timer.time(name, fn, a.inputs * a.N)
        res["repeats_done"] = r + 1
        res["rates"] = _rates(timer, variants, res)
        save(a, res)
        if timer.out_of_time():
            res["stopped_early"] = f"--max-seconds {a.max_seconds} reached after {r + 1} rounds"
            break

    if a.inputs_per_batch > 1 and not timer.out_of_time():
        res["selection"] = _selection_pass(a, model, k, shape, device, noise, timer)
    res["complete"] = True
    save(a, res)
    return res


def composed_model(name: str, tiny: bool = False):
    """(model, shape, classes) of a bench_diffusion_speed.py configuration, loaded by path (benchmarks are no
    package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_diffusion_speed.py")
    spec = importlib.util.spec_from_file_location("bench_diffusion_speed", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    model, shape, k = module.build(name, SIGMA, tiny)   # the denoiser's t* for the sampling noise's σ
    return model.eval(), tuple(shape), k


def _ours(sampler, xs, noise, n, device):
    return lambda: [sampler.counts_np(x, noise, n, input_generator(0, i, STREAM_P, device)) for i, x in enumerate(xs)]


def _rates(timer, variants, res):
    ref = timer.median("reference")
    out = {}
    for name, (_, prec) in variants.items():
        rate = timer.median(name)
        peak_name = res["peak_flops"]["fp32_models"] if prec == "fp32" else prec
        out[name] = {"passes_per_s": rate, "runs": timer.runs[name], "precision": prec, "vs_reference": rate / ref,
                     "peak": peak_name,
                     "fraction_of_peak": res["flops_per_pass"] * rate / res["peak_flops"][peak_name],
                     "seconds_per_input_N100k": (N_CERTIFY + 100) / rate}
    return out


def _selection_pass(a, model, k, shape, device, noise, timer):
    """N0 draws for K inputs: one input at a time vs counts_many over the K (same noise streams)."""
    K, n0 = a.inputs_per_batch, a.n0
    xs = [torch.rand(shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(K)]
    s = Sampler(model, k, a.batch, device, amp=device.type == "cuda")
    gens = lambda: [input_generator(0, i, STREAM_SELECT, device) for i in range(K)]  # noqa: E731
    one = lambda: [s.counts_np(x, noise, n0, g) for x, g in zip(xs, gens())]  # noqa: E731
    many = lambda: s.counts_many(xs, noise, [n0] * K, gens()).cpu()  # noqa: E731
    one(), many()
    same = bool(np.array_equal(np.stack(one()), many().numpy()))
    for _ in range(a.repeats):
        timer.time("selection one input at a time", one, K * n0)
        timer.time(f"selection {K} inputs per batch", many, K * n0)
        if timer.out_of_time():
            break
    one_rate, many_rate = timer.median("selection one input at a time"), timer.median(f"selection {K} inputs per batch")
    return {"n0": n0, "inputs_per_batch": K, "precision": "bf16" if device.type == "cuda" else "fp32",
            "one_at_a_time_passes_per_s": one_rate, "grouped_passes_per_s": many_rate, "ratio": many_rate / one_rate,
            "identical_counts": same}


def cpu_name():
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def save(a, res):
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, a.json)


def report(res) -> str:
    """The printed table of one run."""
    peak = res["peak_flops"]
    lines = [f"device={res['device']} ({res['device_name']}) arch={res['arch']} shape={res['shape']} N={res['N']} "
             f"batch={res['batch']} inputs={res['inputs']} repeats={res.get('repeats_done', 0)} "
             f"threads={res['threads']} torch={res['torch']} clock={res.get('clock', 'wall')}",
             f"FLOPs per forward pass: {res['flops_per_pass'] / 1e9:.4g} GFLOP; matmul peak measured here: " +
             ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in peak.items() if k != "fp32_models"),
             f"{'variant':>28} {'passes/s':>12} {'x Cohen':>8} {'of peak':>8} {'s/input N=100k':>15}"]
    for name, r in res.get("rates", {}).items():
        lines.append(f"{name:>28} {r['passes_per_s']:12,.0f} {r['vs_reference']:7.2f}x "
                     f"{100 * r['fraction_of_peak']:6.1f}% {r['seconds_per_input_N100k']:15.2f}   "
                     f"({r['peak']} peak)")
    sel = res.get("selection")
    if sel:
        lines.append(f"selection pass N0={sel['n0']} ({sel['precision']}): {sel['one_at_a_time_passes_per_s']:,.0f} "
                     f"passes/s one input at a time, {sel['grouped_passes_per_s']:,.0f} with "
                     f"{sel['inputs_per_batch']} inputs per batch ({sel['ratio']:.2f}x; identical counts: "
                     f"{sel['identical_counts']})")
    if res.get("stopped_early"):
        lines.append(f"stopped early: {res['stopped_early']}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lenet")
    p.add_argument("--composed", metavar="NAME",
                   help="a denoise-then-classify model of bench_diffusion_speed.py instead of --arch (e.g. ddpm+lenet)")
    p.add_argument("--tiny", action="store_true", help="--composed CIFAR-10 models at toy width (CPU smoke tests)")
    p.add_argument("--eager", action="store_true", help="CPU: also time the Sampler without its TorchScript trace")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--N", type=int, default=20000, help="draws per input in each timed call")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--inputs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="both", choices=["both", "fp32", "bf16"], help="CUDA: which of ours")
    p.add_argument("--cuda-graph", action="store_true", help="CUDA: also time ours with --cuda-graph")
    p.add_argument("--n0", type=int, default=100, help="selection draws per input in the selection-pass timing")
    p.add_argument("--inputs-per-batch", type=int, default=10, help="K for the selection pass (1: skip it)")
    p.add_argument("--baseline-sampling", help="a sampling.py of another revision, timed side by side")
    p.add_argument("--clock", default="wall", choices=["wall", "process"],
                   help="passes per wall second, or per CPU second of this process (CPU only; steadier when shared)")
    p.add_argument("--max-seconds", type=float, default=1e9, help="stop the timed rounds after this long")
    p.add_argument("--json", help="write the results here (rewritten after every round)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    print(report(run(a)))


if __name__ == "__main__":
    main()
