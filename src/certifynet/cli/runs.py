"""Shared driver for the per-input scripts: validate, open model + data, pick the shard, resume, loop."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from certifynet.cli import CliParser, refuse
from certifynet.data import image_dataset
from certifynet.errors import CertifyNetError
from certifynet.models import file_sha256
from certifynet.paths import check_output_file, shown
from certifynet.pipeline import (InputSampler, add_common_run_args, add_noise_args, check_run_args,
                                 load_smoothing_model, open_inputs)
from certifynet.progress import progress
from certifynet.records import RowLog, parse_shard, select_indices, shard_path
from certifynet.sampling import resolve_device


def per_input_parser(prog: str, doc: str, out_help: str) -> CliParser:
    """The parser shared by sample.py / certify.py / predict.py: model, data, inputs, noise, --out."""
    p = CliParser(prog=prog, description=doc)
    p.add_argument("--out", help=out_help)
    add_common_run_args(p)
    add_noise_args(p)
    add_image_args(p)
    return p


@dataclass
class Run:
    """What a sample/certify/predict run works on: its sampler, data, the inputs of its shard, metadata, output."""
    sampler: InputSampler
    data: object
    indices: list
    meta: dict
    shard: tuple
    out: str


def open_run(args, mode: str, default_out: str) -> Run:
    """Validate every flag and the output path (nothing is created), then load the model and data and select
    this shard's inputs."""
    check_run_args(args, mode)
    check_image_args(args)
    shard = parse_shard(args.shard)
    out = check_output_file(shard_path(args.out or default_out, shard))
    device = resolve_device(args.device)
    model, ckpt, model_meta = load_smoothing_model(args.model, args.dataset, args.arch, args.denoiser,
                                                   args.sigma, device, args.normalization)
    if args.image:  # one image file instead of a dataset (add_image_args)
        data, info = image_dataset(args.image, ckpt.dataset, args.image_label)
        model_meta.update(image=os.path.abspath(args.image), image_sha256=file_sha256(args.image))
    else:
        data, info = open_inputs(ckpt.dataset, args.split, args.data_dir)
    indices = select_indices(len(data), args.start, args.end, args.skip, args.max, shard)
    sampler = InputSampler(model, info.num_classes, info.dim, args, device)
    # n_inputs (dataset size) lets merge.py rebuild the full selection and report missing shards.
    meta = {**model_meta, **sampler.meta(), "split": args.split, "n_inputs": len(data), "shard": list(shard),
            "start": args.start, "end": args.end, "skip": args.skip, "max": args.max,
            "command": " ".join(sys.argv)}
    return Run(sampler, data, indices, meta, shard, out)


def nothing_to_do(indices, shard) -> bool:
    """True (and says so) when this shard selects no inputs: an array with more tasks than inputs."""
    if indices:
        return False
    print(f"shard {shard[0]}/{shard[1]} selects no inputs; nothing to do", file=sys.stderr)
    return True


def run_rows(log: RowLog, indices, make_row, desc: str, show: bool = True, prefetch=None) -> int:
    """Write make_row(idx) for every idx not yet in the log; returns how many were written.
    `prefetch(idxs)` (InputSampler.prefetcher) is called ahead of each group of `prefetch.group` inputs."""
    todo = [i for i in indices if i not in log.done]
    if len(todo) < len(indices):
        print(f"resuming: {len(indices) - len(todo)} of {len(indices)} inputs already in {shown(log.path)}",
              file=sys.stderr)
    group = getattr(prefetch, "group", 1)
    with progress(len(todo), desc, "input", enabled=show) as bar:
        for k, idx in enumerate(todo):
            if prefetch is not None and k % group == 0:
                prefetch(todo[k:k + group])
            log.write(make_row(idx))
            bar.update(1)
    return len(todo)


def item(data, i):
    """(image, integer label) of dataset item i."""
    x, y = data[i]
    return x, int(y)


def add_image_args(p):
    """--image: certify one image file (e.g. one uploaded to the web app) instead of dataset inputs."""
    g = p.add_argument_group("one image instead of the dataset")
    g.add_argument("--image", help="a PNG/JPEG of the model's size and channels (8-bit, read as value/255) or a "
                                   ".npy float array (C,H,W) in [0,1]; it is input idx 0")
    g.add_argument("--image-label", type=int, default=-1, help="its true label (-1: unknown)")


def check_image_args(args) -> None:
    """--image replaces the dataset: refuse the dataset flags with it, and --image-label without it."""
    if args.image:
        refuse(args, ["split", "data_dir"], "with --image (the image file is the only input)")
        if args.select == "label" and args.image_label < 0:
            raise CertifyNetError("--select label needs the image's --image-label")
    else:
        refuse(args, ["image_label"], "without --image")
