"""Shared driver for the per-input scripts: open model + data, pick the shard, resume, loop with tqdm."""
from __future__ import annotations

import sys

from tqdm import tqdm

from certifynet.errors import CertifyNetError
import argparse

from certifynet.pipeline import InputSampler, add_common_run_args, add_noise_args, load_smoothing_model, open_inputs
from certifynet.sampling import resolve_device
from certifynet.records import RowLog, parse_shard, select_indices, shard_path


def per_input_parser(prog: str, doc: str, out_help: str) -> argparse.ArgumentParser:
    """The parser shared by sample.py / certify.py / predict.py: model, data, inputs, noise, --out."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help=out_help)
    add_common_run_args(p)
    add_noise_args(p)
    return p


def require(args, *names):
    for n in names:
        if getattr(args, n.replace("-", "_")) is None:
            raise CertifyNetError(f"--{n} is required")


def open_run(args):
    """(sampler, dataset, indices, meta) for a sample/certify run from parsed args."""
    require(args, "model", "sigma")
    device = resolve_device(args.device)
    model, ckpt, model_meta = load_smoothing_model(args.model, args.dataset, args.arch, args.denoiser,
                                                   args.sigma, device, args.normalization)
    data, info = open_inputs(ckpt.dataset, args.split, args.data_dir)
    shard = parse_shard(args.shard)
    indices = select_indices(len(data), args.start, args.end, args.skip, args.max, shard)
    sampler = InputSampler(model, info.num_classes, info.dim, args, device)
    # n_inputs (dataset size) lets merge.py rebuild the full selection and report missing shards.
    meta = {**model_meta, **sampler.meta(), "split": args.split, "n_inputs": len(data), "shard": list(shard),
            "start": args.start, "end": args.end, "skip": args.skip, "max": args.max,
            "command": " ".join(sys.argv)}
    return sampler, data, indices, meta, shard


def run_rows(log: RowLog, indices, make_row, desc: str, prefetch=None) -> int:
    """Write make_row(idx) for every idx not yet in the log; returns how many were written.
    `prefetch(idxs)` (InputSampler.prefetcher) is called ahead of each group of `prefetch.group` inputs."""
    todo = [i for i in indices if i not in log.done]
    if len(todo) < len(indices):
        print(f"resuming: {len(indices) - len(todo)} of {len(indices)} inputs already in {log.path}", file=sys.stderr)
    group = getattr(prefetch, "group", 1)
    for k, idx in enumerate(tqdm(todo, desc=desc, unit="input", file=sys.stderr, dynamic_ncols=True)):
        if prefetch is not None and k % group == 0:
            prefetch(todo[k:k + group])
        log.write(make_row(idx))
    return len(todo)


def output_path(args, shard, default: str) -> str:
    return shard_path(args.out or default, shard)
