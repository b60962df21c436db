"""Glue between models, noise, the sampler and certification: what each script runs per input."""
from __future__ import annotations

import math
import sys
import time

import torch

from certifynet.cli import refuse
from certifynet.cli.base import add_common_run_args, add_noise_args  # noqa: F401 (re-exported)
from certifynet.data import dataset_info, get_dataset
from certifynet.errors import CertifyNetError, check_alpha, check_sample_sizes, check_seed, check_sigma
from certifynet.models import file_sha256, load_checkpoint, parse_normalization
from certifynet.noise import make_noise
from certifynet.progress import progress
from certifynet.records import check_selection
from certifynet.sampling import (STREAM_P, STREAM_Q, STREAM_Q_PILOT, STREAM_SELECT, Sampler, check_finite_input,
                                 input_generator, parse_device)

# Inputs with at least this many batches of draws get their own progress bar (N = 10⁶ at --batch 1000).
INNER_PROGRESS_BATCHES = 200


def load_smoothing_model(model_path: str, dataset: str | None = None, arch: str | None = None,
                         denoiser_path: str | None = None, sigma: float | None = None, device="cpu",
                         normalization=None, quiet: bool = False):
    """The base classifier f to smooth (optionally denoiser → classifier), and metadata naming it.
    Prints a one-line load summary (arch, dataset, parameters, normalisation) to stderr unless `quiet`."""
    ckpt = load_checkpoint(model_path, arch=arch, dataset=dataset, normalization=parse_normalization(normalization))
    model, meta = ckpt.model, ckpt.metadata()
    if not quiet:
        print(f"model: {ckpt.summary()}", file=sys.stderr)
    if denoiser_path:
        from certifynet.denoise import DenoisedClassifier, load_denoiser
        den = load_denoiser(denoiser_path)
        trained = (den.sigma or {}).get("values") or []
        if trained and sigma is not None and not min(trained) - 1e-9 <= sigma <= max(trained) + 1e-9:
            print(f"warning: denoiser '{denoiser_path}' was trained at σ in {trained}, smoothing uses σ={sigma}",
                  file=sys.stderr)
        model = DenoisedClassifier(den.model, model, sigma)
        meta.update(denoiser=den.path, denoiser_sha256=file_sha256(den.path), denoiser_arch=den.config)
    return model.to(device).eval(), ckpt, meta


def parse_percentile(text) -> str | float:
    """--q-percentile: 'x', 'x+' or a number in (0, 1]."""
    if text in ("x", "x+"):
        return text
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise CertifyNetError(f"--q-percentile must be 'x', 'x+' or a number in (0, 1], got '{text}'") from None
    if not 0.0 < v <= 1.0:
        raise CertifyNetError(f"--q-percentile must be in (0, 1], got {text}")
    return v


def check_run_args(args, mode: str) -> None:
    """Validate every sampling flag of sample/certify/predict before anything is loaded or written, and refuse
    flags that do not apply to the mode (`args.given` holds the flags given explicitly)."""
    if args.model is None:
        raise CertifyNetError("--model is required")
    if args.sigma is None:
        raise CertifyNetError("--sigma is required (σ of the smoothing noise)")
    check_sigma(args.sigma)
    check_alpha(args.alpha)
    check_seed(args.seed)
    parse_device(args.device)
    check_selection(args.start, args.end, args.skip, args.max)
    if args.batch < 1:
        raise CertifyNetError(f"--batch must be >= 1, got {args.batch}")
    check_inputs_per_batch(args.inputs_per_batch)
    if args.k < 0:
        raise CertifyNetError(f"--k must be >= 0, got {args.k}")
    if args.k and args.dist == "gaussian" and "dist" in args.given:
        raise CertifyNetError("--k > 0 needs --dist general_gaussian (or leave --dist out)")
    if mode in ("predict", "attack"):
        why = {"predict": "to predict.py (PREDICT counts N draws of P and tests the top two classes)",
               "attack": "to attack.py (it attacks under P, then PREDICT counts N draws of P at x+δ)"}[mode]
        refuse(args, ["N0", "select", "q_dist", "q_sigma", "q_percentile", "iss", "iss_decline", "iss_n0"]
               + (["inputs_per_batch"] if mode == "attack" else []), why)
        check_sample_sizes(0, args.N)
        return
    refuse(args, ["q_sigma"] if args.q_dist != "rescaled" else [], "without --q-dist rescaled")
    refuse(args, ["q_percentile"] if args.q_dist != "truncated" else [], "without --q-dist truncated")
    if args.q_dist == "rescaled" and args.q_sigma is not None:
        check_sigma(args.q_sigma, "q_sigma")
    if args.q_dist == "truncated":
        parse_percentile(args.q_percentile)
    if args.iss:
        refuse(args, ["N0"], "with --iss: the ISS pilot (--iss-n0 draws) picks the class")
        check_sample_sizes(0, args.N)
        if not 1 <= args.iss_n0 <= args.N:
            raise CertifyNetError(f"--iss-n0 (the ISS pilot) must be in [1, N={args.N}], got {args.iss_n0}")
        d = args.iss_decline
        if not (math.isfinite(d) and d >= 0 and (args.iss == "absolute" or d < 1)):
            raise CertifyNetError(f"--iss-decline must be >= 0{' and < 1' if args.iss == 'relative' else ''}, got {d}")
        if args.q_dist == "truncated" and args.q_percentile == "x+":
            raise CertifyNetError("--q-percentile x+ (re-sample P when every P draw hits) is not available with --iss")
    else:
        refuse(args, ["iss_decline", "iss_n0"], "without --iss")
        if args.select == "label":
            refuse(args, ["N0"], "with --select label (the true label is counted; there are no selection draws)")
        check_sample_sizes(args.N0 if args.select == "n0" else 0, args.N, select_draws=args.select == "n0")


class InputSampler:
    """Per-input sampling for NP, DSRS (P and Q) and ISS; every stream seeded by (seed, idx, stream)."""

    def __init__(self, model, num_classes: int, dim: int, args, device, shape=None):
        self.args, self.device, self.dim = args, device, dim
        self.sampler = Sampler(model, num_classes, args.batch, device, args.amp, args.channels_last, args.optimize,
                               getattr(args, "cuda_graph", False))
        self.inputs_per_batch = check_inputs_per_batch(getattr(args, "inputs_per_batch", 1))
        self._prefetched = {}  # (idx, stream) → counts sampled ahead by prefetch()
        dist = "general_gaussian" if args.k else args.dist  # --k K alone selects the generalized Gaussian
        self.p_noise = make_noise(dist, args.sigma, dim, args.k)
        self.q_dist = args.q_dist
        self.q_percentile = parse_percentile(args.q_percentile) if self.q_dist == "truncated" else None
        self.planner = None
        self.iss_step = min(args.batch, args.N)  # ISS sample sizes are multiples of this (the reference: the batch)
        if args.iss and args.q_dist == "none":  # ISS-NP plans with the Gaussian R(n, p); ISS-DSRS plans per input
            from certifynet.certify.iss import IssPlanner
            self.planner = IssPlanner(n_max=args.N, batch=self.iss_step, sigma=args.sigma, alpha=args.alpha,
                                      decline=args.iss_decline, mode=args.iss, n0=args.iss_n0)
        if self.q_dist == "rescaled":
            self.q_sigma = args.q_sigma if args.q_sigma is not None else 0.8 * args.sigma
            self.q_noise = make_noise("general_gaussian", self.q_sigma, dim, args.k)
        self.show_progress = getattr(args, "progress", True)

    def meta(self) -> dict:
        a = self.args
        m = {"sigma": a.sigma, "k": a.k, "d": self.dim, "dist": self.p_noise.params(), "N0": a.N0, "N": a.N,
             "alpha": a.alpha, "seed": a.seed, "select": a.select, "q_mode": None, "q_param": None, "iss": a.iss,
             # these fix how the (seed, idx) noise stream is laid out, so resumed rows stay identical
             "batch": a.batch, "channels_last": a.channels_last, "amp": a.amp, "optimize": a.optimize}
        if a.iss:
            m.update(N0=a.iss_n0, iss_decline=a.iss_decline, iss_n0=a.iss_n0)
        elif a.select == "label":
            m["N0"] = 0
        if self.q_dist == "rescaled":
            m.update(q_mode="rescaled", q_param=self.q_sigma)
        elif self.q_dist == "truncated":
            m.update(q_mode="truncated", q_param=self.q_percentile)
        return m

    def columns(self):
        cols = ["idx", "label", "pred", "n0", "n", "count"]
        if self.q_dist != "none":
            cols += ["n_q", "count_q", "q_kind", "q_param"]
        if self.args.iss:
            cols += ["pilot_n", "pilot_count"] + (["pilot_n_q", "pilot_count_q"] if self.q_dist != "none" else [])
        return cols + ["time"]

    def _gen(self, idx, stream):
        return input_generator(self.args.seed, idx, stream, self.device)

    def _count(self, x, noise, n, idx, stream):
        """Class counts (numpy) of n draws from input idx's `stream`: sampled ahead by prefetch(), or now.
        Inputs of ≥ INNER_PROGRESS_BATCHES batches are counted in chunks of whole batches (the same draws)
        with a progress bar of their own."""
        ahead = self._prefetched.pop((idx, stream), None)
        if ahead is not None:
            return ahead
        s, gen = self.sampler, self._gen(idx, stream)
        chunk = INNER_PROGRESS_BATCHES * s.batch
        if n < chunk or not self.show_progress:
            return s.counts_np(x, noise, n, gen)
        total = None
        with progress(n, f"input {idx}", "draw", leave=False) as bar:
            for start in range(0, n, chunk):
                part = s.counts_np(x, noise, min(chunk, n - start), gen)
                total = part if total is None else total + part
                bar.update(min(chunk, n - start))
        return total

    def _truncated_q(self, p_lower, p_upper):
        """Truncated Q with p_T fixed (a number) or from heuristic x / x+ on a P lower bound."""
        from certifynet.certify.dsrs import pooled_np_fallback_needed, truncation_beta, truncation_percentile
        a = self.args
        if self.q_percentile in ("x", "x+"):
            if self.q_percentile == "x+" and pooled_np_fallback_needed(p_upper):
                return self.p_noise, "P", float("nan")
            pt = truncation_percentile(p_lower, heuristic="x")
        else:
            pt = float(self.q_percentile)
        return make_noise("truncated", a.sigma, self.dim, a.k, percentile=pt,
                          beta=truncation_beta(pt, self.dim, a.k)), "Q", pt

    def _choose_q(self, count, n, alpha_bound):
        """(Q noise, kind, q_param), fixed from P counts that are independent of every Q draw."""
        if self.q_dist == "rescaled":
            return self.q_noise, "Q", self.q_sigma
        from certifynet.certify.neyman_pearson import cp_interval
        return self._truncated_q(*cp_interval(count, n, alpha_bound))

    def _q_pilot_cap(self, pilot_count: int) -> int:
        """ISS-DSRS: the budget cap when a Q pilot can save draws for this P pilot count, else 0 (fixed run)."""
        from certifynet.certify.iss import iss_dsrs_q_pilot_cap
        a = self.args
        return iss_dsrs_q_pilot_cap(pilot_count, a.iss_n0, a.N, self.iss_step, a.sigma, a.alpha, a.iss_decline,
                                    a.iss)

    def select(self, idx: int, x: torch.Tensor, label: int) -> tuple[int, int]:
        """(ĉ_A, selection draws): the top class of N0 STREAM_SELECT draws (Cohen's CERTIFY), or the label, 0."""
        if self.args.select == "n0":
            return int(self._count(x, self.p_noise, self.args.N0, idx, STREAM_SELECT).argmax()), self.args.N0
        return label, 0

    def sample(self, idx: int, x: torch.Tensor, label: int) -> dict:
        """One counts row for input idx.

        Fixed budget: ĉ_A from N0 selection draws (or the label), then N fresh P draws, and for DSRS N
        fresh Q draws (truncated Q's p_T from the P run's bound at α/2, as in the reference).
        ISS: a pilot of n0 draws picks ĉ_A and the sample size; the certificate uses fresh draws only.
        ISS-DSRS also fixes Q from the P pilot and, where that can save draws, draws an n0 Q pilot and plans
        (n_P, n_Q) within a cap; elsewhere it runs n_P = n_Q = N (never dearer than fixed-N DSRS).
        """
        check_finite_input(x, idx)
        a, t0 = self.args, time.time()
        row = {"idx": idx, "label": label}
        q = None
        if a.iss:
            pilot = self._count(x, self.p_noise, a.iss_n0, idx, STREAM_SELECT)
            pred = int(pilot.argmax()) if a.select == "n0" else label
            k0 = int(pilot[pred])
            row.update(n0=a.iss_n0, pilot_n=a.iss_n0, pilot_count=k0)
            if self.q_dist == "none":
                n = n_q = self.planner.sample_size(k0)
            else:
                from certifynet.certify.iss import dsrs_expected_radius_fn, iss_dsrs_budget
                q = self._choose_q(k0, a.iss_n0, 2 * a.alpha)  # one-sided pilot bound at α
                cap = self._q_pilot_cap(k0)
                n = n_q = a.N  # the Q pilot cannot save draws: the fixed run (cost n0 + 2N)
                row.update(pilot_n_q=0, pilot_count_q=0)
                if cap:  # it can: plan within the cap, so that cost 2·n0 + 2n ≤ n0 + 2N
                    kq0 = int(self._count(x, q[0], a.iss_n0, idx, STREAM_Q_PILOT)[pred])
                    row.update(pilot_n_q=a.iss_n0, pilot_count_q=kq0)
                    radius_fn = dsrs_expected_radius_fn(a.sigma, self.dim, a.k, self.q_dist, q[2], a.alpha)
                    n, n_q = iss_dsrs_budget(k0, kq0, a.iss_n0, a.N, self.iss_step, a.alpha, a.iss_decline, a.iss,
                                             radius_fn, n_cap=cap)
        else:
            pred, row["n0"] = self.select(idx, x, label)
            n = n_q = a.N
        count = int(self._count(x, self.p_noise, n, idx, STREAM_P)[pred]) if n > 0 else 0
        row.update(pred=pred, n=n, count=count)
        if self.q_dist != "none":
            q_noise, kind, q_param = q or self._choose_q(count, n, a.alpha / 2)
            count_q = int(self._count(x, q_noise, n_q, idx, STREAM_Q)[pred]) if n_q > 0 else 0
            row.update(n_q=n_q, count_q=count_q, q_kind=kind, q_param=q_param)
        row["time"] = round(time.time() - t0, 4)
        return row

    def predict_counts(self, idx: int, x: torch.Tensor):
        """Class counts of N fresh P draws for Cohen's PREDICT (stream P), after the input check."""
        check_finite_input(x, idx)
        return self._count(x, self.p_noise, self.args.N, idx, STREAM_P)

    # ---- cross-input batching of the selection / pilot draws (--inputs-per-batch)
    def prefetch(self, items) -> None:
        """Sample the first draws of several inputs [(idx, x, label)] together (`Sampler.counts_many`): the N0
        selection draws, or the ISS pilot (and, for ISS-DSRS, the Q pilot, with Q fixed from each P pilot).
        Each input's draws come from its own (seed, idx, stream) generator in the chunks `sample` would use, so
        its noise is the same as alone, and so are its rows wherever f's output on a row does not depend on the
        other rows of its forward pass (see `Sampler.counts_many`). These draws only choose ĉ_A and the sample
        sizes; the certificate's counts are always drawn afresh, input by input."""
        a = self.args
        n_first = a.iss_n0 if a.iss else (a.N0 if a.select == "n0" else 0)
        if n_first <= 0 or len(items) < 2:
            return
        for idx, x, _ in items:
            check_finite_input(x, idx)
        xs = [x for _, x, _ in items]
        pilots = self.sampler.counts_many(xs, self.p_noise, [n_first] * len(xs),
                                          [self._gen(idx, STREAM_SELECT) for idx, _, _ in items]).cpu().numpy()
        self._prefetched.update({(idx, STREAM_SELECT): c for (idx, _, _), c in zip(items, pilots)})
        if a.iss and self.q_dist != "none":
            preds = [int(c.argmax()) if a.select == "n0" else label for c, (_, _, label) in zip(pilots, items)]
            # only where `sample` will draw a Q pilot (it can save draws)
            todo = [j for j, (c, p) in enumerate(zip(pilots, preds)) if self._q_pilot_cap(int(c[p]))]
            if not todo:
                return
            qs = [self._choose_q(int(pilots[j][preds[j]]), n_first, 2 * a.alpha)[0] for j in todo]
            q_pilots = self.sampler.counts_many([xs[j] for j in todo], qs, [n_first] * len(todo),
                                                [self._gen(items[j][0], STREAM_Q_PILOT) for j in todo]).cpu().numpy()
            self._prefetched.update({(items[j][0], STREAM_Q_PILOT): c for j, c in zip(todo, q_pilots)})

    def prefetcher(self, data, item):
        """For run_rows: prefetch(idxs) sampling the first draws of `inputs_per_batch` inputs at a time
        (item(data, i) → (x, label)); None when --inputs-per-batch is 1."""
        if self.inputs_per_batch <= 1:
            return None

        def prefetch(idxs):
            self.prefetch([(i, *item(data, i)) for i in idxs])
        prefetch.group = self.inputs_per_batch
        return prefetch


def open_inputs(dataset: str, split: str, data_dir: str):
    """The dataset and its static facts (shape, classes, d)."""
    return get_dataset(dataset, split, data_dir), dataset_info(dataset)


def check_inputs_per_batch(k) -> int:
    if int(k) < 1:
        raise CertifyNetError(f"--inputs-per-batch must be >= 1, got {k}")
    return int(k)


# ------------------------------------------------------------------------------------------------------
# Sequential certification at fixed radii (certify.py --sequential; certifynet.certify.sequential)

def sequential_certifier(sampler: InputSampler, radii):
    """The run's SequentialCertifier: cap --N, batches doubling from 32 up to --batch, level --alpha."""
    from certifynet.certify.sequential import SequentialCertifier
    a = sampler.args
    return SequentialCertifier(radii, a.sigma, a.alpha, a.N, a.batch, d=sampler.dim, k=a.k)


def certify_sequential(sampler: InputSampler, certifier, idx: int, x: torch.Tensor, label: int) -> dict:
    """One sequential log row for input idx.

    ĉ_A from N0 selection draws (stream STREAM_SELECT, as in Cohen's CERTIFY) or the label; then fresh
    STREAM_P draws in the certifier's batches until every radius is settled or the cap N is reached.
    Deterministic from (seed, idx) and the batch schedule (recorded in the sidecar).
    """
    check_finite_input(x, idx)
    t0, s, noise = time.time(), sampler.sampler, sampler.p_noise
    pred, n0 = sampler.select(idx, x, label)
    gen = sampler._gen(idx, STREAM_P)
    state = certifier.run(lambda size, active: int(s.counts_np(x, noise, size, gen)[pred]))
    codes = certifier.decisions(state)[0]
    lower, upper = float(state.lower[0]), float(state.upper[0])
    predict = pred if lower > 0.5 else -1
    draws = int(state.draws[0])
    return {"idx": idx, "label": label, "predict": predict, "radius": float(certifier.certified_radius(state)[0]),
            "correct": int(predict == label and predict >= 0), "time": round(time.time() - t0, 4),
            "pA_lower": lower, "pA_upper": upper, "n0": n0, "n": draws, "hits": int(state.hits[0]),
            "samples": n0 + draws, "decisions": certifier.format_decisions(codes), "method": "sequential"}
