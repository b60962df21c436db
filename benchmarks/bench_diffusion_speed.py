#!/usr/bin/env python
"""Noisy forward passes per second of denoise-then-classify models, through the library's Sampler (its defaults:
channels_last, a TorchScript trace on the CPU; bf16 autocast with --amp on CUDA). Random weights: speed only.

Configurations (--configs):
- lenet: LeNet alone (mnist5k, 28×28);
- drunet+lenet: drunet_small in front;
- ddpm+lenet, ddpm-quick+lenet: the mnist5k DDPM's UNet (train.py SIZES 'bench' / 'quick') in front, one shot;
- ddpm-cifar10+resnet110: a UNet shaped like google/ddpm-cifar10-32 (35.7M parameters) + CIFAR ResNet-110, 32×32;
- ddpm-cifar10+vit224: the same UNet + timm ViT-B/16, resized 32 → 224 on the device (Carlini et al.'s CIFAR-10
  pipeline; the authors report 825 noisy samples/s on an A100).
Each is timed over --repeats interleaved rounds of --n draws (median); on a shared CPU quote ratios. `--tiny` builds
the two CIFAR-10 configurations at toy width (UNet channels ÷ 8, timm ViT-Ti/16 for ViT-B/16: the same code path,
for CPU smoke tests). `bench_sampler.py --composed NAME` times any configuration against the Cohen-style loop and
the hardware's limit (benchmarks/gpu_check.sh runs the CIFAR-10 ones on a GPU).

  python benchmarks/bench_diffusion_speed.py [--configs lenet drunet+lenet ddpm+lenet] [--n 2000 --batch 500]
  python benchmarks/bench_diffusion_speed.py --device cuda --amp --configs ddpm-cifar10+resnet110 ddpm-cifar10+vit224
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from certifynet.noise import GaussianNoise
from certifynet.sampling import Sampler, input_generator, resolve_device

DDPM_CIFAR10 = {  # google/ddpm-cifar10-32's UNet2DModel config (Ho et al.'s CIFAR-10 model)
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 256, 256],
    "layers_per_block": 2, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "flip_sin_to_cos": False,
    "freq_shift": 1, "norm_eps": 1e-6, "attention_head_dim": None}
# The same shape at toy width (CPU smoke tests of the CIFAR-10 configurations).
DDPM_CIFAR10_TINY = {**DDPM_CIFAR10, "block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8}
CONFIGS = ("lenet", "drunet+lenet", "ddpm-quick+lenet", "ddpm+lenet", "ddpm-cifar10+resnet110", "ddpm-cifar10+vit224")


def _diffusion(config: dict, sigma: float):
    from certifynet.denoise.diffusion import DiffusionDenoiser, linear_schedule
    from certifynet.denoise.diffusion.folders import diffusers_lib
    torch.manual_seed(0)
    return DiffusionDenoiser(diffusers_lib().UNet2DModel(**config).eval(), linear_schedule(), sigma)


def build(name: str, sigma: float, tiny: bool = False):
    """(model, input shape, number of classes) for a configuration name (module docstring); `tiny`: the CIFAR-10
    configurations at toy width."""
    from certifynet.denoise import DenoisedClassifier, get_denoiser
    from certifynet.denoise.diffusion import ClassifierSpec, build_classifier
    from certifynet.denoise.diffusion.train import DDPMOptions, unet_config
    from certifynet.models import get_architecture
    torch.manual_seed(0)
    if name.endswith("+lenet") or name == "lenet":
        clf = get_architecture("lenet", "mnist5k")
        den = {"lenet": None, "drunet+lenet": lambda: get_denoiser("drunet_small", 1),
               "ddpm+lenet": lambda: _diffusion(unet_config(DDPMOptions(size="bench")), sigma),
               "ddpm-quick+lenet": lambda: _diffusion(unet_config(DDPMOptions(size="quick")), sigma)}[name]
        model = clf if den is None else DenoisedClassifier(den(), clf, sigma)
        return model.eval(), (1, 28, 28), 10
    if name == "ddpm-cifar10+resnet110":
        clf = get_architecture("cifar_resnet110", "cifar10")
    elif name == "ddpm-cifar10+vit224":
        vit = "timm:vit_tiny_patch16_224" if tiny else "timm:vit_base_patch16_224"
        clf, _ = build_classifier(ClassifierSpec(vit, num_classes=10))
    else:
        raise SystemExit(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    unet = _diffusion(DDPM_CIFAR10_TINY if tiny else DDPM_CIFAR10, sigma)
    return DenoisedClassifier(unet, clf, sigma).eval(), (3, 32, 32), 10


def passes_per_second(sampler: Sampler, shape, n: int, sigma: float, device, clock=time.perf_counter) -> float:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    t0 = clock()
    sampler.counts(x, GaussianNoise(sigma), n, input_generator(0, 0, 1, device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (clock() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS[:4]), choices=CONFIGS, metavar="CONFIG",
                   help=f"from {', '.join(CONFIGS)}")
    p.add_argument("--tiny", action="store_true", help="the CIFAR-10 configurations at toy width (CPU smoke test)")
    p.add_argument("--n", type=int, default=2000, help="draws per timed round")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--no-optimize", dest="optimize", action="store_false", help="no TorchScript trace on the CPU")
    p.add_argument("--threads", type=int)
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="process: passes per CPU second of this process (steadier on a shared CPU)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    clock = time.process_time if a.clock == "process" else time.perf_counter
    samplers = {}
    for name in a.configs:
        model, shape, k = build(name, a.sigma, a.tiny)
        s = Sampler(model, k, batch=a.batch, device=device, amp=a.amp, optimize=a.optimize)
        passes_per_second(s, shape, a.batch, a.sigma, device)   # warm-up: copy, trace, kernels
        samplers[name] = (s, shape)
    rates = {name: [] for name in samplers}
    for _ in range(a.repeats):   # interleaved: machine noise hits every configuration alike
        for name, (s, shape) in samplers.items():
            rates[name].append(passes_per_second(s, shape, a.n, a.sigma, device, clock))
    base = statistics.median(rates[a.configs[0]])
    print(f"device {device} ({torch.get_num_threads()} threads), batch {a.batch}, n {a.n}, median of {a.repeats}, "
          f"{'CPU' if a.clock == 'process' else 'wall'} clock; "
          f"amp {a.amp and device.type == 'cuda'}, trace {a.optimize and device.type == 'cpu'}")
    out = {}
    for name, rs in rates.items():
        med = statistics.median(rs)
        out[name] = {"passes_per_s": med, "all": rs, "relative_to_first": med / base}
        print(f"  {name:26s} {med:10.0f} passes/s   ×{med / base:.3f} of {a.configs[0]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "batch": a.batch, "n": a.n,
                       "clock": a.clock,
                       "results": out}, f, indent=1)


if __name__ == "__main__":
    main()
