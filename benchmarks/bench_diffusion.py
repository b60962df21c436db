#!/usr/bin/env python
"""Denoised smoothing on mnist5k: a clean-trained LeNet alone, behind a stability-trained DRUNet, and behind our
own diffusion model (one-shot DDS, Carlini et al. 2023). Certified accuracy at r = 0.25 / 0.5 / 0.75 / 1.0.

Cohen's CERTIFY per digit, through the library (Sampler, input_generator, certify_from_counts): ĉ_A from N0
draws of stream STREAM_SELECT, p̲_A from N fresh draws of STREAM_P (Clopper–Pearson at α), R = σΦ⁻¹(p̲_A).
Every configuration sees the same δ draws for the same digit (the streams depend on (seed, idx) only).

  python benchmarks/bench_diffusion.py --lenet LENET.pth --drunet 0.5=DRUNET_0.5.pth --ddpm DDPM_FOLDER \\
      [--sigmas 0.5 1.0] [--digits 100] [--N 10000] [--json OUT.json]

Missing models can be trained first with --train (the quickstart's recipes: LeNet 5 epochs without noise,
drunet_small 4 epochs of stability training per σ, scripts/train_ddpm.py's benchmark model), under --workdir.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from certifynet.certify import certify_from_counts
from certifynet.certify.outcome import ABSTAIN, is_correct
from certifynet.noise import GaussianNoise
from certifynet.sampling import STREAM_P, STREAM_SELECT, Sampler, input_generator

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def certify_digits(model, data, sigma, n0, n, alpha, batch, digits, seed=0, start=0, optimize=True):
    """[(label, pred, radius)] for test digits start … start + digits − 1; and the wall seconds."""
    from certifynet.denoise.diffusion import diffusion_noise_stream
    sampler = Sampler(model, 10, batch=batch, optimize=optimize)
    noise = GaussianNoise(sigma)
    rows, t0 = [], time.time()
    for idx in range(start, start + digits):
        x, y = data[idx]
        with diffusion_noise_stream(model, seed, idx, STREAM_SELECT):
            c_hat = int(sampler.counts(x, noise, n0, input_generator(seed, idx, STREAM_SELECT, "cpu")).argmax())
        with diffusion_noise_stream(model, seed, idx, STREAM_P):
            count = int(sampler.counts(x, noise, n, input_generator(seed, idx, STREAM_P, "cpu"))[c_hat])
        abstain, _, radius = certify_from_counts(count, n, sigma, alpha)
        rows.append((int(y), ABSTAIN if abstain else c_hat, 0.0 if abstain else float(radius)))
    return rows, time.time() - t0


def certified_accuracy(rows, radii=RADII) -> dict:
    y, pred, r = (np.array(v) for v in zip(*rows))
    ok = is_correct(pred, y).astype(bool)
    return {f"r={q:g}": float(np.mean(ok & (r >= q))) for q in radii}


def build_models(a, sigma):
    """{label: model} for one σ: the LeNet alone, + DRUNet (if given for σ), + the diffusion model."""
    from certifynet.denoise import DenoisedClassifier, load_denoiser
    from certifynet.denoise.diffusion import DiffusionOptions, load_diffusion_denoiser
    from certifynet.models import load_checkpoint
    lenet = load_checkpoint(a.lenet).model.eval()
    models = {"LeNet (clean)": lenet}
    drunet = {float(k): v for k, v in a.drunet}.get(float(sigma))
    if drunet:
        models["+ DRUNet (stab.)"] = DenoisedClassifier(load_denoiser(drunet).model, lenet, sigma).eval()
    if a.ddpm:
        den, meta = load_diffusion_denoiser(a.ddpm, sigma, DiffusionOptions(diffusion_steps=a.diffusion_steps))
        models[f"+ DDPM (ours{', K=' + str(a.diffusion_steps) if a.diffusion_steps > 1 else ''})"] = \
            DenoisedClassifier(den, lenet, sigma).eval()
        print(f"  {meta['summary']}", flush=True)
    return models


def markdown(results) -> str:
    cols = [f"r={q:g}" for q in RADII]
    lines = ["| σ | model | " + " | ".join(cols) + " | s/digit |", "|---|---|" + "---|" * (len(cols) + 1)]
    for r in results:
        acc = " | ".join(f"{100 * r['accuracy'][c]:.0f}%" for c in cols)
        lines.append(f"| {r['sigma']:g} | {r['model']} | {acc} | {r['seconds'] / r['digits']:.2f} |")
    return "\n".join(lines)


def merge(paths) -> list:
    """Results of several --json files (shards of digits) joined per (σ, model, N0, N, α), accuracy recomputed."""
    groups = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["results"]:
                key = (r["sigma"], r["model"], r["N0"], r["N"], r["alpha"])
                g = groups.setdefault(key, {**r, "rows": [], "digits": 0, "seconds": 0.0, "starts": []})
                g["rows"] += r["rows"]
                g["digits"] += r["digits"]
                g["seconds"] += r["seconds"]
                start = r.get("start", 0)
                if any(a < start + r["digits"] and start < a + n for a, n in g["starts"]):
                    raise SystemExit(f"{path}: digits {start}..{start + r['digits'] - 1} of σ={r['sigma']:g} "
                                     f"{r['model']} are already in another file")
                g["starts"].append((start, r["digits"]))
    for g in groups.values():
        g["accuracy"] = certified_accuracy(g["rows"])
    rank = {"LeNet": 0, "+ DRUNet": 1, "+ DDPM": 2}
    return sorted(groups.values(), key=lambda g: (g["sigma"], min(v for k, v in {**rank, "": 3}.items()
                                                                 if g["model"].startswith(k)), g["model"]))


def train_missing(a) -> None:
    """The quickstart's recipes for whatever model path was not given (under --workdir)."""
    import importlib
    w = a.workdir
    def run(mod, argv):
        if importlib.import_module(f"certifynet.cli.{mod}").main([str(v) for v in argv]):
            raise SystemExit(f"training with {mod} failed")
    if not a.lenet:
        run("train", ["mnist5k", "lenet", "--noise", 0, "--epochs", 5, "--batch", 64, "--lr", 0.01, "--workers", 0,
                      "--outdir", f"{w}/lenet_clean", "--resume"])
        a.lenet = f"{w}/lenet_clean/checkpoint.pth"
    given = {float(k) for k, _ in a.drunet}
    for s in a.sigmas:
        if float(s) not in given:
            run("train_denoiser", ["--opt", "denoiser/options/train_drunet_small_mnist_stab.json", "--classifier",
                                   a.lenet, "--sigma", s, "--outdir", f"{w}/drunet_stab_{s:g}", "--resume"])
            a.drunet.append((f"{s:g}", f"{w}/drunet_stab_{s:g}/denoiser.pth"))
    if not a.ddpm:
        run("train_ddpm", ["--outdir", f"{w}/ddpm", "--resume"])
        a.ddpm = f"{w}/ddpm"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lenet", help="clean-trained LeNet checkpoint")
    p.add_argument("--drunet", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                   metavar="SIGMA=PATH", help="stability-trained DRUNet for σ (repeat per σ)")
    p.add_argument("--ddpm", help="diffusers folder of the mnist5k DDPM (scripts/train_ddpm.py)")
    p.add_argument("--diffusion-steps", type=int, default=1, help="K reverse steps (1: one shot)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--digits", type=int, default=100)
    p.add_argument("--start", type=int, default=0, help="first test digit (split a run; the rows are per digit)")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="no TorchScript trace (the Sampler's CPU default); eager was faster for the UNets here")
    p.add_argument("--N0", type=int, default=100)
    p.add_argument("--N", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", nargs="*", help="model labels to run (prefix match), e.g. LeNet '+ DDPM'")
    p.add_argument("--train", action="store_true", help="train the models not given (under --workdir)")
    p.add_argument("--workdir", default="results/bench_diffusion")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only print the table of these --json files, joined")
    a = p.parse_args(argv)
    if a.merge:
        results = merge(a.merge)
        print(markdown(results))
        for r in results:
            print(f"σ={r['sigma']:g} {r['model']}: {r['digits']} digits (start, count: {sorted(r['starts'])}), "
                  f"N0={r['N0']}, N={r['N']}, α={r['alpha']}")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.train:
        train_missing(a)
    if not a.lenet:
        p.error("--lenet is required (or --train)")
    from certifynet.data import get_dataset
    data = get_dataset("mnist5k", "test")
    results = []
    for sigma in a.sigmas:
        for label, model in build_models(a, sigma).items():
            if a.only and not any(label.startswith(o) for o in a.only):
                continue
            rows, secs = certify_digits(model, data, sigma, a.N0, a.N, a.alpha, a.batch, a.digits, start=a.start,
                                        optimize=a.optimize)
            res = {"sigma": sigma, "model": label, "digits": a.digits, "start": a.start, "N0": a.N0, "N": a.N,
                   "alpha": a.alpha, "seconds": secs, "accuracy": certified_accuracy(rows), "rows": rows}
            results.append(res)
            print(f"σ={sigma:g} {label}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in res["accuracy"].items())
                  + f"  ({secs:.0f}s, {(a.N0 + a.N) * a.digits / secs:.0f} passes/s)", flush=True)
    print(f"\n{a.digits} mnist5k test digits from {a.start}, N0={a.N0}, N={a.N}, α={a.alpha}, torch threads "
          f"{torch.get_num_threads()}\n")
    print(markdown(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items()}, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
