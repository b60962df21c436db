"""Shared driver for the per-input scripts: validate, open model + data, pick the shard, resume, loop."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from certifynet.cli import refuse
from certifynet.cli.base import add_image_args, nothing_to_do, per_input_parser, run_rows  # noqa: F401 (re-exported)
from certifynet.data import image_dataset
from certifynet.errors import CertifyNetError
from certifynet.models import file_sha256
from certifynet.paths import check_output_file
from certifynet.pipeline import InputSampler, check_run_args, load_smoothing_model, open_inputs
from certifynet.records import parse_shard, select_indices, shard_path
from certifynet.sampling import resolve_device


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


def item(data, i):
    """(image, integer label) of dataset item i."""
    x, y = data[i]
    return x, int(y)


def check_image_args(args) -> None:
    """--image replaces the dataset: refuse the dataset flags with it, and --image-label without it."""
    if args.image:
        refuse(args, ["split", "data_dir"], "with --image (the image file is the only input)")
        if args.select == "label" and args.image_label < 0:
            raise CertifyNetError("--select label needs the image's --image-label")
    else:
        refuse(args, ["image_label"], "without --image")
