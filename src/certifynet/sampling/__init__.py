"""Sampling: from a base classifier f and noise to class counts, certificates and logs.

    streams.py        noise streams seeded by (seed, idx, stream): input_generator, STREAM_*
    device.py         the one device resolver: parse_device, resolve_device
    engine.py         Sampler (batched noisy forward passes → counts), the progress hook
    cuda_graph.py     one full batch replayed from a captured CUDA graph
    smooth.py         Smooth: Cohen's CERTIFY and PREDICT as a Python object
    config.py         SamplingConfig: a run's options, their defaults, validate(mode), to_argv()
    model.py          load_smoothing_model (a checkpoint, optionally behind a denoiser)
    inputs.py         InputSampler: NP, DSRS and ISS counts per input; diffusion_noise_stream (K-step ξ per input)
    run.py            open_run: validate, load, select the shard
    sequential.py     sequential certification at fixed radii, per input
    rows.py           the resumable row loop
    stages.py         run_sample, run_predict, sample_and_certify, run_sequential
    certify_stage.py  run_certify, certify_counts (torch-free)

Every name is loaded on first use, so that the torch-free parts (`SamplingConfig`, `run_certify` from a counts
file, and every CLI `--help`) never import torch: `from certifynet.sampling import Smooth` works as usual.
"""
from __future__ import annotations

from certifynet.lazy import lazy_exports

_EXPORTS = {
    "streams": ("STREAM_SELECT", "STREAM_P", "STREAM_Q", "STREAM_Q_PILOT", "STREAM_ATTACK", "STREAM_ATTACK_PREDICT",
                "input_generator"),
    "device": ("parse_device", "resolve_device"),
    "engine": ("Sampler", "set_progress_hook", "check_finite_input"),
    "cuda_graph": ("GraphedBatch", "capture_cuda_graph"),
    "smooth": ("Smooth",),
    "config": ("SamplingConfig", "parse_percentile", "check_inputs_per_batch", "check_run_args"),
    "model": ("load_smoothing_model",),
    "inputs": ("InputSampler", "INNER_PROGRESS_BATCHES", "diffusion_noise_stream"),
    "run": ("Run", "open_run", "open_inputs", "item"),
    "sequential": ("sequential_certifier", "certify_sequential"),
    "rows": ("run_rows", "run_batches", "nothing_to_do"),
    "stages": ("run_sample", "run_predict", "sample_and_certify", "run_sequential"),
    "certify_stage": ("run_certify", "certify_counts"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
