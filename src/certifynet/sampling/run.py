"""`open_run`: what a sample/certify/predict/attack run works on, opened from its `SamplingConfig`.

The options are validated and the output path checked before anything is loaded or created; then the
model and the data are loaded and this shard's inputs selected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from certifynet.bounds import check_batch_memory
from certifynet.data import dataset_info, get_dataset, image_dataset
from certifynet.models import file_sha256
from certifynet.paths import check_output_file
from certifynet.records import parse_shard, select_indices, shard_path
from certifynet.sampling.config import SamplingConfig
from certifynet.sampling.device import resolve_device
from certifynet.sampling.inputs import InputSampler
from certifynet.sampling.model import load_smoothing_model


@dataclass
class Run:
    """A run's sampler, data, the inputs of its shard, metadata (the sidecar's), output path."""
    sampler: InputSampler
    data: object
    indices: list
    meta: dict
    shard: tuple
    out: str


def open_run(config: SamplingConfig, mode: str, default_out: str, command: str | None = None) -> Run:
    """Validate every option and the output path (nothing is created), then load the model and data and select
    this shard's inputs. `command` is recorded in the sidecar (default: `config.command(mode)`)."""
    c = config
    c.validate(mode)
    shard = parse_shard(c.shard)
    out = check_output_file(shard_path(c.out or default_out, shard))
    device = resolve_device(c.device)
    model, ckpt, model_meta = load_smoothing_model(c.model, c.dataset, c.arch, c.denoiser, c.sigma, device,
                                                   c.normalization, diffusion_options=c.diffusion_options())
    check_batch_memory(c.batch, dataset_info(ckpt.dataset).dim)  # now that d is known: before any data or draw
    if c.image:  # one image file instead of a dataset
        data, info = image_dataset(c.image, ckpt.dataset, c.image_label)
        model_meta.update(image=os.path.abspath(c.image), image_sha256=file_sha256(c.image))
    else:
        data, info = open_inputs(ckpt.dataset, c.split, c.data_dir)
    indices = select_indices(len(data), c.start, c.end, c.skip, c.max, shard)
    sampler = InputSampler(model, info.num_classes, info.dim, c, device)
    # n_inputs (dataset size) lets merge.py rebuild the full selection and report missing shards.
    meta = {**model_meta, **sampler.meta(), "split": c.split, "n_inputs": len(data), "shard": list(shard),
            "start": c.start, "end": c.end, "skip": c.skip, "max": c.max,
            "command": c.command(mode) if command is None else command}
    return Run(sampler, data, indices, meta, shard, out)


def open_inputs(dataset: str, split: str, data_dir: str):
    """The dataset and its static facts (shape, classes, d)."""
    return get_dataset(dataset, split, data_dir), dataset_info(dataset)


def item(data, i):
    """(image, integer label) of dataset item i."""
    x, y = data[i]
    return x, int(y)
