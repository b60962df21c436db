"""The sampling stages as library functions: what sample.py, predict.py and certify.py --model run, and what
the web app's job worker runs. Each takes a `SamplingConfig`, validates it before anything is loaded or
written, writes one log (+ sidecar) row by row, resumably, and returns its path (None when this shard
selects no inputs). `command` is what the sidecar records (default: `config.command(<script>)`).
"""
from __future__ import annotations

import time

from certifynet.bounds import check_schedule_length
from certifynet.certify import predict_from_counts
from certifynet.certify.from_counts import certify_row
from certifynet.certify.outcome import is_correct
from certifynet.errors import CertifyNetError
from certifynet.paths import default_path
from certifynet.records import RowLog
from certifynet.sampling.certify_stage import log_columns, log_meta
from certifynet.sampling.config import DEFAULT_OUT, SamplingConfig
from certifynet.sampling.rows import nothing_to_do, run_rows
from certifynet.sampling.run import item, open_run
from certifynet.sampling.sequential import (
    certify_sequential,
    make_certifier,
    sequential_certifier,
    sequential_params,
)

PREDICT_COLUMNS = ["idx", "label", "predict", "correct", "time", "count1", "count2", "pvalue"]
SEQUENTIAL_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "pA_upper", "n0", "n",
                      "hits", "samples", "decisions", "method"]
# Settings of the counts that PREDICT does not use: left out of its sidecar.
NOT_PREDICT_META = ("N0", "select", "q_mode", "q_param", "iss")


def run_sample(config: SamplingConfig, command: str | None = None) -> str | None:
    """sample.py: one counts row per input (P, and Q for DSRS) into a counts CSV whose rows carry a digest
    bound to the sidecar's settings (certify.py refuses an edited file)."""
    run = open_run(config, "sample", default_path(DEFAULT_OUT["sample"]), command)
    if nothing_to_do(run.indices, run.shard):
        return None
    s = run.sampler
    with RowLog(run.out, s.columns(), {**run.meta, "kind": "counts"}, sep=",", integrity=True) as log:
        run_rows(log, run.indices, lambda i: s.sample(i, *item(run.data, i)), "sampling", config.progress,
                 s.prefetcher(run.data, item))
    return run.out


def run_predict(config: SamplingConfig, command: str | None = None) -> str | None:
    """predict.py: Cohen's PREDICT per input, from N draws of P: the top class, or −1 when the binomial test of
    its count n1 against the runner-up's n2 has p > α (`certify.predict_from_counts`)."""
    run = open_run(config, "predict", default_path(DEFAULT_OUT["predict"]), command)
    if nothing_to_do(run.indices, run.shard):
        return None
    meta = {k: v for k, v in run.meta.items() if k not in NOT_PREDICT_META}

    def make(idx):
        t0 = time.time()
        x, label = item(run.data, idx)
        pred, n1, n2, pvalue = predict_from_counts(run.sampler.predict_counts(idx, x), config.alpha)
        return {"idx": idx, "label": label, "predict": pred, "correct": is_correct(pred, label),
                "time": round(time.time() - t0, 4), "count1": n1, "count2": n2, "pvalue": pvalue}

    with RowLog(run.out, PREDICT_COLUMNS, {**meta, "kind": "predict_log"}) as log:
        run_rows(log, run.indices, make, "predict", config.progress)
    return run.out


def sampling_method(config: SamplingConfig) -> str:
    """The method the sampling options imply; an explicit `method` must agree with them."""
    c = config
    implied = ("iss-" if c.iss else "") + ("dsrs" if c.q_dist != "none" else "np")
    if c.method is not None and c.method != implied:
        if c.method.startswith("iss") != bool(c.iss):
            need = "{iss} absolute|relative" if c.method.startswith("iss") else "no {iss}"
        else:
            need = "{q_dist} truncated|rescaled" if c.method.endswith("dsrs") else "no {q_dist}"
        raise CertifyNetError(f"{{method}} {c.method} needs {need} (these flags sample for {{method}} {implied})",
                              "method", "iss", "q_dist")
    return implied


def sample_and_certify(config: SamplingConfig, command: str | None = None) -> str | None:
    """certify.py --model: sample each input as sample.py would and certify its row at once (Cohen's one-step
    flow); the rows equal those of sample.py then certify.py --counts."""
    method = sampling_method(config)
    run = open_run(config, "certify", default_path(f"results/certify_{method}.tsv"), command)
    if nothing_to_do(run.indices, run.shard):
        return None
    with RowLog(run.out, log_columns(method), log_meta(run.meta, method, config, run.meta["command"])) as log:
        def make(idx):
            counts = run.sampler.sample(idx, *item(run.data, idx))
            row = certify_row(counts, run.meta, method, config.alpha)
            row["time"] = counts["time"]
            return row
        run_rows(log, run.indices, make, f"certify {method}", config.progress,
                 run.sampler.prefetcher(run.data, item))
    return run.out


def check_sequential(config: SamplingConfig) -> None:
    """Refuse what sequential certification cannot combine with, before anything is loaded or written."""
    c = config
    for bad, why in ((not c.sequential, "{radii} needs {sequential}"),
                     (not c.radii, "{sequential} needs {radii} R [R ...]"),
                     (bool(c.counts), "{sequential} samples as it goes: give {model}, not {counts}"),
                     (bool(c.iss), "{sequential} replaces ISS: drop {iss}"),
                     (c.q_dist != "none", "{sequential} certifies NP only (DSRS is not supported): drop {q_dist}"),
                     (c.method not in (None, "np"), "{sequential} certifies NP only: drop {method}")):
        if bad:
            raise CertifyNetError(why, "radii", "sequential", "model", "counts", "iss", "q_dist", "method")
    from certifynet.certify.sequential import batch_schedule, check_radii
    check_radii(c.radii)
    check_schedule_length(c.N, c.batch)  # bounds.py: never build a schedule that cannot fit
    batch_schedule(c.N, c.batch)
    c.check_sequential_and_estimate("certify")  # the rule's own options first, named as the user gave them
    if c.dataset or not c.k:  # calibrate now (cached for the run): an α the rule cannot meet is refused up front
        from certifynet.data import dataset_info
        make_certifier(c, c.radii, dataset_info(c.dataset).dim if c.dataset else 2 * int(c.k or 0) + 1)


def _rule_of(params: dict) -> str:
    """The rule a sequential sidecar records, in words (no `sequential_rule`: the confidence sequence)."""
    if params.get("sequential_rule") is None:
        return "the confidence sequence (--sequential-rule cs)"
    futility = params.get("futility")
    return (f"the calibrated rule, futility {params.get('futility_rule')} γ={futility:g}" if futility
            else "the calibrated rule without futility")


def check_same_rule(out: str, params: dict) -> None:
    """A resumed sequential log must have been made by the same rule (the sidecar check would name only the first
    differing key); its levels, schedule and the rest are compared by `RowLog` as usual."""
    import os

    from certifynet.records.sidecar import read_meta
    if not (os.path.isfile(out) and os.path.getsize(out) > 0):
        return
    old = read_meta(out, required=False)
    if old.get("method") == "sequential" and _rule_of(old) != _rule_of(params):
        raise CertifyNetError(f"'{out}' was made with {_rule_of(old)}, this run asks for {_rule_of(params)}; use "
                              f"another output path, or the same rule to resume it")


def run_sequential(config: SamplingConfig, command: str | None = None) -> str | None:
    """certify.py --sequential --radii R ...: sequential NP at fixed radii, by the calibrated group-sequential rule
    (default) or the confidence sequence (`sequential_rule` cs); docs/sequential.md. The sidecar records the
    rule, its calibrated levels, futility and schedule, so that a resume with other ones is refused."""
    check_sequential(config)
    run = open_run(config, "certify", default_path("results/certify_sequential.tsv"), command)
    if nothing_to_do(run.indices, run.shard):
        return None
    certifier = sequential_certifier(run.sampler, config.radii)
    params = sequential_params(certifier)
    check_same_rule(run.out, params)
    sidecar = {**log_meta(run.meta, "np", config, run.meta["command"]), "method": "sequential", **params}
    with RowLog(run.out, SEQUENTIAL_COLUMNS, sidecar) as log:
        run_rows(log, run.indices, lambda idx: certify_sequential(run.sampler, certifier, idx, *item(run.data, idx)),
                 "certify sequential", config.progress,
                 run.sampler.prefetcher(run.data, item))
    return run.out
