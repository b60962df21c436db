"""Know the cost first: a short pilot on the actual device and model projects the forward passes and the wall time
of a sample.py / certify.py run, and the shard count that fits a time limit (`--estimate`). Nothing is written.

What the pilot measures:
- t(b), the time of one call of b noisy forward passes, as t(b) = c₀ + c₁·b through the medians of 3 calls at
  the batch B and 3 at b = min(32, B), after one warm-up call (TorchScript trace, cuDNN autotuning).
  Forward passes per second: B / t(B).
- startup: loading the model and the data, the warm-up and (sequential) the rule's calibration: what every
  shard pays once.
- forward passes per input, by method:
  fixed N: N0 + N (+ N for DSRS's Q), exact.
  ISS: the ISS pilot of each pilot input (its own stream, as in the run), which fixes its sizes (n, n_Q)
  exactly as the run will: n0 (+ the ISS-DSRS Q pilot) + n (+ n_Q).
  sequential: the rule on each pilot input's own draws (the run's streams) for the first checks, up to
  `pilot_draws`; an input still open then continues by simulation: `paths` continuations with Bernoulli(p̂_A)
  draws, p̂_A = S/n of its pilot, through the same certifier; its cost is their mean stopping time.
  The mean over the pilot inputs, which are spread evenly over the selection (the first among them), is the
  projection per input.
- wall time per input: Σ over its calls of t(b), plus (sequential) the certifier's time per check.
With a time limit T (a SLURM task's --time): shards = ⌈inputs / k⌉ where k inputs fit in HEADROOM·T − startup.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import time
from dataclasses import dataclass, field

import numpy as np

from certifynet.errors import CertifyNetError
from certifynet.paths import default_path, project_root
from certifynet.sampling.config import DEFAULT_OUT, SamplingConfig, format_duration, parse_time_limit
from certifynet.sampling.streams import STREAM_P, STREAM_Q

HEADROOM = 0.8        # a shard is planned to take at most this share of the time limit
PILOT_INPUTS = 16     # at most this many pilot inputs
PILOT_SECONDS = 60.0  # ... and fewer where their pilot would take longer than this (slow devices)
PILOT_DRAWS = 1000    # sequential: the checks run on real draws, up to this many draws
PATHS = 200           # sequential: simulated continuations per input still open after its pilot
_TIMING_CALLS = 3
_SMALL = 32
_TIMING_STREAM = 99   # the timing calls' noise: a stream no run uses (their counts are discarded)


@dataclass
class Estimate:
    """The projected cost of a run (`estimate_run`); `lines()` is what --estimate prints, `to_dict()` is JSON-able."""
    mode: str
    method: str                    # np | dsrs | iss-np | iss-dsrs | sequential (gs) | sequential (cs)
    device: str
    batch: int
    inputs: int                    # inputs selected (every shard)
    passes_per_second: float       # full batches on this device
    seconds_per_call: float        # c₀
    seconds_per_pass: float        # c₁
    startup_seconds: float
    passes_per_input: float        # expected (exact for fixed N)
    exact: bool
    seconds_per_input: float
    pilot_inputs: list = field(default_factory=list)
    pilot_passes: list = field(default_factory=list)   # projected passes of each pilot input
    passes_per_input_se: float | None = None            # standard error of the mean over the pilot inputs
    pilot_seconds: float = 0.0
    time_limit_seconds: float | None = None
    shards: int | None = None
    shard_seconds: float | None = None
    submit: str | None = None
    notes: list = field(default_factory=list)

    @property
    def total_passes(self) -> float:
        return self.inputs * self.passes_per_input

    @property
    def total_seconds(self) -> float:
        """One process, every selected input: startup + inputs × seconds per input."""
        return self.startup_seconds + self.inputs * self.seconds_per_input

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total_passes": self.total_passes, "total_seconds": self.total_seconds}

    def lines(self) -> list[str]:
        spread = (f": {min(self.pilot_passes):,.0f} – {max(self.pilot_passes):,.0f}" if len(self.pilot_passes) > 1
                  else "")
        se = f" ± {self.passes_per_input_se:,.0f}" if self.passes_per_input_se else ""
        how = "exact" if self.exact else f"expected{se}; {len(self.pilot_inputs)} pilot input(s){spread}"
        out = [f"estimate for {self.mode}.py, {self.method} (pilot {self.pilot_seconds:.1f} s; nothing written)",
               f"  forward passes per second on {self.device}: {self.passes_per_second:,.0f} (batch {self.batch})",
               f"  forward passes per input: {self.passes_per_input:,.0f} ({how})",
               f"  projected for {self.inputs:,} input(s): {self.total_passes:,.0f} forward passes, "
               f"{format_duration(self.total_seconds)} in one process (startup {self.startup_seconds:.1f} s + "
               f"{self.seconds_per_input:.3g} s per input)"]
        if self.time_limit_seconds is not None:
            if self.shards is None:
                out.append(f"  time limit {format_duration(self.time_limit_seconds)}: one input does not fit in "
                           f"{HEADROOM:.0%} of it; give a longer limit")
            else:
                out.append(f"  time limit {format_duration(self.time_limit_seconds)}: {self.shards} shard(s), each "
                           f"projected at {format_duration(self.shard_seconds)} (≤ {HEADROOM:.0%} of the limit)")
                out.append(f"  submit: {self.submit}")
        return out + [f"  note: {n}" for n in self.notes]


# ---------------------------------------------------------------- timing
@dataclass
class _Timing:
    c0: float
    c1: float
    batch: int

    def call(self, b: int) -> float:
        return self.c0 + self.c1 * b

    def counts(self, n: int) -> float:
        """Seconds of one counts call of n draws: ⌊n/B⌋ full batches and the rest."""
        full, rest = divmod(int(n), self.batch)
        return full * self.call(self.batch) + (self.call(rest) if rest else 0.0)


def _median_time(fn, calls: int = _TIMING_CALLS) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _time_calls(sampler, x) -> _Timing:
    """t(b) = c₀ + c₁·b from calls at b = B and b = min(32, B), after one warm-up call at B (draws discarded)."""
    from certifynet.sampling.streams import input_generator
    s, batch = sampler.sampler, sampler.sampler.batch
    gen = input_generator(sampler.config.seed, 0, _TIMING_STREAM, sampler.device)  # no input's draws
    s.counts_np(x, sampler.p_noise, batch, gen)
    t_full = _median_time(lambda: s.counts_np(x, sampler.p_noise, batch, gen))
    small = min(_SMALL, batch)
    if small == batch:
        return _Timing(0.0, t_full / batch, batch)
    t_small = _median_time(lambda: s.counts_np(x, sampler.p_noise, small, gen))
    c1 = max((t_full - t_small) / (batch - small), t_full / batch * 1e-3)
    return _Timing(max(t_small - small * c1, 0.0), c1, batch)


# ---------------------------------------------------------------- per method
def _fixed(config: SamplingConfig, timing: _Timing) -> tuple[float, float]:
    """(passes, seconds) of one fixed-N input: N0 + N (+ N for Q)."""
    c = config
    n0 = c.N0 if c.select == "n0" else 0
    per_distribution = 2 if c.q_dist != "none" else 1
    return float(c.passes_per_input()[0]), timing.counts(n0) + per_distribution * timing.counts(c.N)


def _iss(sampler, items, timing: _Timing) -> tuple[np.ndarray, np.ndarray]:
    """(passes, seconds) per pilot input: its real ISS pilot(s), and the sizes the run will draw for it.

    `InputSampler.sample` is run with the P and Q counts stood in by zeros, through its queue of counts sampled
    ahead (`_prefetched`): the pilot draws are real, the sizes are the run's, the P/Q draws are not made."""
    zeros = np.zeros(sampler.sampler.num_classes, dtype=np.int64)
    passes, seconds = [], []
    for idx, x, label in items:
        keys = [(idx, STREAM_P), (idx, STREAM_Q)]
        sampler._prefetched.update({k: zeros for k in keys})
        try:
            row = sampler.sample(idx, x, label)
        finally:
            for k in keys:
                sampler._prefetched.pop(k, None)
        sizes = [row["n0"], row.get("pilot_n_q", 0), row["n"], row.get("n_q", 0)]
        passes.append(float(sum(sizes)))
        seconds.append(sum(timing.counts(n) for n in sizes))
    return np.array(passes), np.array(seconds)


def _replicate(state, rows, paths: int):
    """The certifier state of `rows`, each repeated `paths` times (continuations of one observed path)."""
    values = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return type(state)(**{k: np.repeat(v[rows], paths, axis=0) if isinstance(v, np.ndarray) else v
                          for k, v in values.items()})


def _sequential(sampler, certifier, items, timing: _Timing, pilot_draws: int, paths: int, seed: int):
    """(passes, seconds) per pilot input: the rule on its real draws for the first checks, then the mean of
    `paths` simulated continuations at p̂_A = S/n (module docstring)."""
    s, noise, m = sampler.sampler, sampler.p_noise, len(items)
    selected = [sampler.select(idx, x, label) for idx, x, label in items]
    gens = [sampler._gen(idx, STREAM_P) for idx, _, _ in items]
    state, checks, k, check_time = certifier.start(m), np.zeros(m), 0, []
    schedule = certifier.schedule
    while k < schedule.size and state.active.any() and int(schedule[:k].sum()) < pilot_draws:
        hits = np.zeros(m, dtype=np.int64)
        for i in np.flatnonzero(state.active):
            hits[i] = s.counts_np(items[i][1], noise, int(schedule[k]), gens[i])[selected[i][0]]
        checks += state.active
        t0 = time.perf_counter()
        state = certifier.update(state, hits, int(schedule[k]))
        check_time.append(time.perf_counter() - t0)
        k += 1
    draws, calls = state.draws.astype(float), checks.copy()
    still = np.flatnonzero(state.active)
    if still.size:
        sim = _replicate(state, still, paths)
        p_hat = np.repeat(state.hits[still] / np.maximum(state.draws[still], 1), paths)
        rng, more = np.random.default_rng(seed), np.zeros(sim.m)
        for size in schedule[k:]:
            if not sim.active.any():
                break
            more += sim.active
            sim = certifier.update(sim, rng.binomial(int(size), p_hat), int(size))
        draws[still] = sim.draws.reshape(still.size, paths).mean(axis=1)
        calls[still] += more.reshape(still.size, paths).mean(axis=1)
    per_check = timing.c0 + (float(np.median(check_time)) if check_time else 0.0)
    n0 = np.array([n for _, n in selected], dtype=float)
    seconds = np.array([timing.counts(int(v)) for v in n0]) + calls * per_check + draws * timing.c1
    return n0 + draws, seconds


# ---------------------------------------------------------------- the estimate
def _pilot_items(data, indices, count: int):
    """`count` inputs spread evenly over the selection (the first among them), as (idx, x, label)."""
    from certifynet.sampling.run import item
    count = min(count, len(indices))
    picks = sorted({indices[round(j * (len(indices) - 1) / max(count - 1, 1))] for j in range(count)})
    return [(i, *item(data, i)) for i in picks]


def _load(config: SamplingConfig):
    """(sampler, data, selected indices) as a run opens them (`run.open_run`), without its output path."""
    from certifynet.data import image_dataset
    from certifynet.records import select_indices
    from certifynet.sampling.device import resolve_device
    from certifynet.sampling.inputs import InputSampler
    from certifynet.sampling.model import load_smoothing_model
    from certifynet.sampling.run import open_inputs
    c = config
    device = resolve_device(c.device)
    model, ckpt, _ = load_smoothing_model(c.model, c.dataset, c.arch, c.denoiser, c.sigma, device, c.normalization,
                                          diffusion_options=c.diffusion_options())
    if c.image:
        data, info = image_dataset(c.image, ckpt.dataset, c.image_label)
    else:
        data, info = open_inputs(ckpt.dataset, c.split, c.data_dir)
    indices = select_indices(len(data), c.start, c.end, c.skip, c.max)
    return InputSampler(model, info.num_classes, info.dim, c, device), data, indices


def _method(config: SamplingConfig, mode: str) -> str:
    from certifynet.sampling.stages import check_sequential, sampling_method
    if mode == "certify" and (config.sequential or config.radii):
        check_sequential(config)
        return "sequential"
    return sampling_method(config)


def estimate_run(config: SamplingConfig, mode: str = "certify", *, pilot_inputs: int = PILOT_INPUTS,
                 pilot_seconds: float = PILOT_SECONDS, pilot_draws: int = PILOT_DRAWS, paths: int = PATHS,
                 seed: int = 0) -> Estimate:
    """The projected cost of `config` run as sample.py (mode "sample") or certify.py --model ("certify"), from a
    pilot on its device and model (module docstring). The estimate covers the whole selection (every shard);
    `config.time_limit` adds the shard count that fits it and the sbatch command. Nothing is written; the
    options are validated first, as the run would. Takes the model's loading, ~7 batches, and the pilot inputs'
    first draws (≤ `pilot_seconds` at the measured speed); the calibrated rule's calibration adds seconds."""
    from certifynet.sampling.run import item
    c = config
    if c.counts:
        raise CertifyNetError("{estimate} projects the cost of sampling: give {model}, not {counts} (certifying a "
                              "counts file samples nothing)", "estimate", "model", "counts")
    c.validate(mode)
    method = _method(c, mode)
    t0 = time.perf_counter()
    sampler, data, indices = _load(c)
    if not indices:
        raise CertifyNetError("the selection ({start}, {end}, {skip}, {max}) holds no inputs", "start", "end",
                              "skip", "max")
    timing = _time_calls(sampler, item(data, indices[0])[0])
    certifier = None
    if method == "sequential":
        from certifynet.sampling.sequential import make_certifier
        certifier = make_certifier(c, c.radii, sampler.dim)  # calibrating: every shard pays it once
    estimate = Estimate(mode, method, str(sampler.device), c.batch, len(indices), c.batch / timing.call(c.batch),
                        timing.c0, timing.c1, time.perf_counter() - t0, 0.0, True, 0.0)
    if method in ("np", "dsrs"):
        estimate.passes_per_input, estimate.seconds_per_input = _fixed(c, timing)
    else:
        first = ((c.N0 if c.select == "n0" else 0) + min(pilot_draws, c.N) if certifier is not None
                 else c.iss_n0 * (2 if c.q_dist != "none" else 1))
        count = max(1, min(pilot_inputs, int(pilot_seconds / max(timing.counts(first), 1e-9))))
        items = _pilot_items(data, indices, count)
        if certifier is not None:
            passes, seconds = _sequential(sampler, certifier, items, timing, pilot_draws, paths, seed)
            estimate.method = f"sequential ({_rule_name(c)})"
        else:
            passes, seconds = _iss(sampler, items, timing)
        estimate.passes_per_input, estimate.seconds_per_input = float(passes.mean()), float(seconds.mean())
        estimate.exact, estimate.pilot_inputs, estimate.pilot_passes = False, [i for i, _, _ in items], passes.tolist()
        _note_spread(estimate, passes, len(indices))
    estimate.pilot_seconds = time.perf_counter() - t0
    if c.shard:
        estimate.notes.append("the estimate covers every shard of the selection (the shard option is ignored)")
    if c.time_limit is not None:
        _plan_shards(estimate, c, mode, method)
    return estimate


def _note_spread(estimate: Estimate, passes: np.ndarray, inputs: int) -> None:
    """The standard error of the pilot mean as an estimate of the selection's mean (sampling without replacement:
    s/√m·√(1 − m/n)), and a note when the pilot leaves out inputs or the error is large."""
    m = passes.size
    if m < inputs and m > 1:
        estimate.passes_per_input_se = float(passes.std(ddof=1) / math.sqrt(m) * math.sqrt(1 - m / inputs))
        estimate.notes.append(f"{m} of {inputs} inputs were piloted; ± is one standard error over them (the "
                              f"inputs' spread), not the error of projecting each pilot input")
        if estimate.passes_per_input_se > 0.2 * estimate.passes_per_input:
            estimate.notes.append("a few inputs dominate the cost (near a threshold, or running to the cap): the "
                                  "projection is uncertain; more pilot inputs narrow it (estimate_run's pilot_inputs)")


def _rule_name(config: SamplingConfig) -> str:
    if config.sequential_rule == "cs":
        return "confidence sequence"
    futility = "no futility" if config.futility == "none" else f"futility {config.futility} γ={config.futility_level:g}"
    return f"calibrated group-sequential, {futility}"


def _plan_shards(estimate: Estimate, config: SamplingConfig, mode: str, method: str) -> None:
    """Shards = ⌈inputs / k⌉, k = the inputs that fit in HEADROOM·T − startup; the sbatch command that submits
    them (scripts/slurm/*.sbatch, one shard per array task)."""
    limit = parse_time_limit(config.time_limit)
    estimate.time_limit_seconds = limit
    fit = math.floor((HEADROOM * limit - estimate.startup_seconds) / max(estimate.seconds_per_input, 1e-9))
    if fit < 1:
        return
    shards = min(estimate.inputs, math.ceil(estimate.inputs / fit))
    estimate.shards = shards
    estimate.shard_seconds = estimate.startup_seconds + math.ceil(estimate.inputs / shards) * estimate.seconds_per_input
    estimate.submit = submit_command(config, mode, method, shards, format_duration(limit))


# ---------------------------------------------------------------- the sbatch command
# SamplingConfig field → the template's variable (scripts/slurm/{certify,sample}.sbatch)
_TEMPLATE_VARS = {"model": "MODEL", "sigma": "SIGMA", "N": "N", "alpha": "ALPHA", "seed": "SEED", "batch": "BATCH",
                  "skip": "SKIP", "max": "MAX", "N0": "N0", "iss_n0": "ISS_N0", "out": "OUT"}


_NOT_FOR_JOB = ("estimate", "time_limit", "shard", "progress", "method")  # the task's shard comes from SLURM
_PATHS = ("model", "denoiser", "image", "data_dir", "out")
_PLAIN = re.compile(r"[^\s'\"\\*?\[\]$`]+")  # survives the templates' unquoted $EXTRA as one word


def _from_root(path: str) -> str:
    """A path as the job sees it: the templates run in the repository root (relative there when below it)."""
    absolute, root = os.path.abspath(path), project_root()
    return os.path.relpath(absolute, root) if absolute.startswith(root + os.sep) else absolute


def submit_command(config: SamplingConfig, mode: str, method: str, shards: int, time_limit: str) -> str:
    """`mkdir -p logs && VAR=... sbatch --array=0-(shards−1) --time=T scripts/slurm/<mode>.sbatch`: the run's
    options as the template's variables, the rest in EXTRA. Where the template cannot spell the run (the
    true label with fixed N, where the templates always pass N0; or an EXTRA option with blanks or quotes, which the
    templates split on blanks), `sbatch --wrap` with the command line instead."""
    c = config
    out = c.out or default_path(DEFAULT_OUT["sample"] if mode == "sample" else f"results/certify_{method}.tsv")
    values = {**c.explicit(), "model": c.model, "sigma": c.sigma, "N": c.N, "alpha": c.alpha, "seed": c.seed,
              "batch": c.batch, "out": out}
    values.update({k: _from_root(values[k]) for k in _PATHS if values.get(k)})
    drop = set(_NOT_FOR_JOB)
    sbatch = f"sbatch --array=0-{shards - 1} --time={time_limit}"
    env = {var: values[name] for name, var in _TEMPLATE_VARS.items() if name in values}
    if c.iss:
        env.update(ISS=c.iss, ISS_N0=c.iss_n0)
        drop |= {"iss", "N0"}
    elif c.select == "n0":
        env["N0"] = c.N0
    if c.q_dist != "none":
        env["Q_DIST"] = c.q_dist
        drop.add("q_dist")
    if mode == "certify":
        env["METHOD"] = "np" if method == "sequential" else method
    rest = {k: v for k, v in values.items() if k not in drop and k not in _TEMPLATE_VARS}
    extra = SamplingConfig.from_explicit(rest).to_argv() if rest else []
    if (c.select == "label" and not c.iss) or not all(_PLAIN.fullmatch(a) for a in extra):
        argv = SamplingConfig.from_explicit({k: v for k, v in values.items() if k not in _NOT_FOR_JOB}).to_argv()
        cmd = shlex.join(["python", f"scripts/{mode}.py", *argv, "--no-progress"])
        return f"mkdir -p logs && {sbatch} --output=logs/%x_%A_%a.out --wrap {shlex.quote(cmd)}"
    if extra:
        env["EXTRA"] = " ".join(extra)
    assignments = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    return f"mkdir -p logs && {assignments} {sbatch} scripts/slurm/{mode}.sbatch"
