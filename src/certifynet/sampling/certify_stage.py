"""certify.py's stage: certificates from a stored counts file (numpy/scipy only, torch is never loaded), or,
with a model, sample-and-certify and sequential certification (`stages`, loaded only then).

A certify log is tab-separated; its first columns are Cohen's `idx label predict radius correct time`, then
`pA_lower n samples method` (and the P/Q interval ends for DSRS); abstain is predict = −1, radius 0.
"""
from __future__ import annotations

import os
import time

from certifynet.certify.from_counts import certify_row, check_method
from certifynet.certify.methods import counts_kind
from certifynet.denoise.diffusion.options import DIFFUSION_FIELDS
from certifynet.errors import CertifyNetError, check_alpha, refuse
from certifynet.paths import check_output_file
from certifynet.records import RowLog, parse_shard, read_counts, select_rows, shard_part, shard_path
from certifynet.records.merge import to_ranges
from certifynet.sampling.config import SamplingConfig
from certifynet.sampling.rows import nothing_to_do, run_rows

LOG_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "n", "samples", "method"]
DSRS_COLUMNS = ["pA_upper", "qA_lower", "qA_upper"]
# From a counts file: options that must agree with the sidecar field they would set, and options that do not
# apply (nothing is sampled).
SIDECAR_FLAGS = {"sigma": "sigma", "N": "N", "N0": "N0", "k": "k", "seed": "seed", "select": "select",
                 "iss": "iss", "iss_decline": "iss_decline", "iss_n0": "iss_n0", "batch": "batch"}
SAMPLING_ONLY = ("arch", "dataset", "normalization", "split", "data_dir", "denoiser", "image", "image_label", "device",
                 "amp", "optimize", "channels_last", "dist", "q_dist", "q_sigma", "q_percentile", *DIFFUSION_FIELDS)


def log_columns(method: str) -> list[str]:
    return LOG_COLUMNS + (DSRS_COLUMNS if method.endswith("dsrs") else [])


def log_meta(meta: dict, method: str, config: SamplingConfig, command: str) -> dict:
    """A certify log's sidecar: the counts' (or run's) sidecar, with the method, α, label and command."""
    keep = {k: v for k, v in meta.items() if k not in ("columns", "kind", "created", "version", "integrity")}
    return {**keep, "kind": "certify_log", "method": method, "alpha": config.alpha, "label": config.label,
            "command": command}


def run_certify(config: SamplingConfig, command: str | None = None) -> str | None:
    """certify.py: certify `config.counts`, or sample with `config.model` and certify (sequentially with
    `config.sequential`). Returns the log's path (None when this shard selects no inputs)."""
    check_alpha(config.alpha)
    if bool(config.counts) == bool(config.model):
        raise CertifyNetError("give exactly one of {counts} FILE (certify stored counts) or {model} CKPT (sample and "
                              "certify)", "counts", "model")
    if config.sequential or config.radii:
        from certifynet.sampling.stages import run_sequential
        return run_sequential(config, command)
    if config.counts:
        return certify_counts(config, command)
    from certifynet.sampling.stages import sample_and_certify
    return sample_and_certify(config, command)


def certify_counts(config: SamplingConfig, command: str | None = None) -> str | None:
    """Certificates for the rows of `config.counts` selected by start/end/skip/max/shard, with `config.method`
    (default: the file's kind) at `config.alpha`, into `config.out` (default `<counts stem>.<method>.tsv`)."""
    c, path = config, config.counts
    meta, _, rows = read_counts(path)
    _check_counts_options(c, meta, path)
    method = check_method(c.method, counts_kind(meta), f"'{path}'")
    shard = parse_shard(c.shard)
    selected = select_rows(rows, c.start, c.end, c.skip, c.max)
    mine = shard_part(selected, shard)
    out = check_output_file(shard_path(c.out or f"{os.path.splitext(path)[0]}.{method}.tsv", shard))
    if nothing_to_do(mine, shard):
        return None
    sidecar = {**log_meta(meta, method, c, c.command("certify") if command is None else command),
               "counts": os.path.abspath(path), "shard": list(shard),
               "indices": to_ranges(int(r["idx"]) for r in selected)}
    by_idx = {int(r["idx"]): r for r in mine}
    with RowLog(out, log_columns(method), sidecar) as log:
        def make(idx):
            t0 = time.time()
            row = certify_row(by_idx[idx], meta, method, c.alpha)
            row["time"] = round(float(by_idx[idx].get("time") or 0) + time.time() - t0, 4)
            return row
        run_rows(log, list(by_idx), make, f"certify {method}", c.progress)
    return out


def _check_counts_options(config: SamplingConfig, meta: dict, path: str) -> None:
    """From a counts file nothing is sampled: sampling options set must agree with the sidecar or are refused."""
    given = set(config.explicit())
    for name, key in SIDECAR_FLAGS.items():
        if name in given and getattr(config, name) != meta.get(key):
            raise CertifyNetError(f"{{{name}}} {getattr(config, name)} disagrees with the counts file '{path}' (its "
                                  f"sidecar has {key}={meta.get(key)!r}); with {{counts}} it comes from the sidecar: "
                                  f"drop the flag", name, "counts")
    refuse(given, SAMPLING_ONLY, "with {counts} (nothing is sampled; the counts file's sidecar fixes how it was "
                                  "sampled)", "counts")
