"""Glue between models, noise, the sampler and certification: what each script runs per input."""
from __future__ import annotations

import sys
import time

import torch

from certifynet.data import dataset_info, get_dataset
from certifynet.errors import CertifyNetError, check_alpha, check_sample_sizes, check_sigma
from certifynet.models import file_sha256, load_checkpoint, parse_normalization
from certifynet.noise import make_noise
from certifynet.sampling import (STREAM_P, STREAM_Q, STREAM_Q_PILOT, STREAM_SELECT, Sampler, check_finite_input,
                                 input_generator)


def load_smoothing_model(model_path: str, dataset: str | None = None, arch: str | None = None,
                         denoiser_path: str | None = None, sigma: float | None = None, device="cpu",
                         normalization=None):
    """The base classifier f to smooth (optionally denoiser → classifier), and metadata naming it."""
    ckpt = load_checkpoint(model_path, arch=arch, dataset=dataset, normalization=parse_normalization(normalization))
    model, meta = ckpt.model, ckpt.metadata()
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


def add_common_run_args(p):
    """Flags shared by sample.py / certify.py / predict.py (model, data, inputs, sharding, speed)."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="classifier checkpoint (ours or a reference layout)")
    g.add_argument("--arch", help="architecture, when the checkpoint does not name it")
    g.add_argument("--dataset", help="dataset (default: from the checkpoint)")
    g.add_argument("--normalization", default=None,
                   help="override the model's input normalisation: dataset | identity | center (DSRS ImageNet) | MEAN/STD")
    g.add_argument("--split", default="test", choices=["train", "test"])
    g.add_argument("--data-dir", default="data")
    g.add_argument("--denoiser", help="denoiser checkpoint placed in front of the classifier (denoised smoothing)")
    g = p.add_argument_group("which inputs")
    g.add_argument("--start", type=int, default=0)
    g.add_argument("--end", type=int, default=None)
    g.add_argument("--skip", type=int, default=1, help="take every skip-th input (Cohen's --skip)")
    g.add_argument("--max", type=int, default=None, help="at most this many inputs")
    g.add_argument("--shard", default=None, help="i/n: the i-th of n contiguous parts (default from SLURM_ARRAY_TASK_ID/COUNT)")
    g = p.add_argument_group("speed")
    g.add_argument("--batch", type=int, default=1000)
    g.add_argument("--device", default="auto")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="on the CPU, run the eager model instead of a frozen TorchScript trace")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW memory (channels_last is on by default: faster convolutions)")


def add_noise_args(p):
    g = p.add_argument_group("noise and sample sizes")
    g.add_argument("--sigma", type=float, required=False, help="σ of the smoothing noise in [0,1] pixel units")
    g.add_argument("--dist", default="gaussian", choices=["gaussian", "general_gaussian"], help="P")
    g.add_argument("--k", type=int, default=0, help="generalized-Gaussian k (0: Gaussian)")
    g.add_argument("--N0", type=int, default=100, help="selection samples")
    g.add_argument("--N", type=int, default=100_000, help="estimation samples (per distribution)")
    g.add_argument("--alpha", type=float, default=0.001, help="failure probability α of each certificate")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--select", default="n0", choices=["n0", "label"],
                   help="class to count: top class of N0 selection draws (Cohen), or the true label (DSRS reference)")
    g.add_argument("--q-dist", default="none", choices=["none", "truncated", "rescaled"], help="DSRS's Q")
    g.add_argument("--q-sigma", type=float, default=None, help="σ_Q for --q-dist rescaled (default 0.8σ)")
    g.add_argument("--q-percentile", default="x",
                   help="truncated Q: the percentile p_T in (0,1], or heuristic 'x' / 'x+' from the P bound")
    g.add_argument("--iss", default=None, choices=["absolute", "relative"], help="input-specific sample sizes")
    g.add_argument("--iss-decline", type=float, default=0.05, help="ISS allowed radius decline ε")
    g.add_argument("--iss-n0", type=int, default=2000, help="ISS pilot draws")


class InputSampler:
    """Per-input sampling for NP, DSRS (P and Q) and ISS; every stream seeded by (seed, idx, stream)."""

    def __init__(self, model, num_classes: int, dim: int, args, device):
        check_sigma(args.sigma)
        check_alpha(args.alpha)
        check_sample_sizes(args.N0 if args.select == "n0" else 0, args.N)
        self.args, self.device, self.dim = args, device, dim
        self.sampler = Sampler(model, num_classes, args.batch, device, args.amp, args.channels_last, args.optimize)
        dist = "general_gaussian" if args.k else args.dist  # --k K alone selects the generalized Gaussian
        self.p_noise = make_noise(dist, args.sigma, dim, args.k)
        self.q_dist = args.q_dist
        self.planner = None
        self.iss_step = min(args.batch, args.N)  # ISS sample sizes are multiples of this (the reference: the batch)
        if args.iss and args.q_dist == "none":  # ISS-NP plans with the Gaussian R(n, p); ISS-DSRS plans per input
            from certifynet.certify.iss import IssPlanner
            self.planner = IssPlanner(n_max=args.N, batch=self.iss_step, sigma=args.sigma, alpha=args.alpha,
                                      decline=args.iss_decline, mode=args.iss, n0=args.iss_n0)
        if args.iss and self.q_dist == "truncated" and args.q_percentile == "x+":
            raise CertifyNetError("--q-percentile x+ (re-sample P when every P draw hits) is not available with --iss")
        if self.q_dist == "rescaled":
            self.q_sigma = args.q_sigma if args.q_sigma is not None else 0.8 * args.sigma
            self.q_noise = make_noise("general_gaussian", self.q_sigma, dim, args.k)

    def meta(self) -> dict:
        a = self.args
        m = {"sigma": a.sigma, "k": a.k, "d": self.dim, "dist": self.p_noise.params(), "N0": a.N0, "N": a.N,
             "alpha": a.alpha, "seed": a.seed, "select": a.select, "q_mode": None, "q_param": None, "iss": a.iss,
             # these fix how the (seed, idx) noise stream is laid out, so resumed rows stay identical
             "batch": a.batch, "channels_last": a.channels_last, "amp": a.amp, "optimize": a.optimize}
        if a.iss:
            m.update(iss_decline=a.iss_decline, iss_n0=a.iss_n0)
        if self.q_dist == "rescaled":
            m.update(q_mode="rescaled", q_param=self.q_sigma)
        elif self.q_dist == "truncated":
            m.update(q_mode="truncated", q_param=a.q_percentile)
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

    def _truncated_q(self, p_lower, p_upper):
        """Truncated Q with p_T fixed (a number) or from heuristic x / x+ on a P lower bound."""
        from certifynet.certify.dsrs import pooled_np_fallback_needed, truncation_beta, truncation_percentile
        a = self.args
        if a.q_percentile in ("x", "x+"):
            if a.q_percentile == "x+" and pooled_np_fallback_needed(p_upper):
                return self.p_noise, "P", float("nan")
            pt = truncation_percentile(p_lower, heuristic="x")
        else:
            pt = float(a.q_percentile)
        return make_noise("truncated", a.sigma, self.dim, a.k, percentile=pt,
                          beta=truncation_beta(pt, self.dim, a.k)), "Q", pt

    def _choose_q(self, count, n, alpha_bound):
        """(Q noise, kind, q_param), fixed from P counts that are independent of every Q draw."""
        if self.q_dist == "rescaled":
            return self.q_noise, "Q", self.q_sigma
        from certifynet.certify.neyman_pearson import cp_interval
        return self._truncated_q(*cp_interval(count, n, alpha_bound))

    def sample(self, idx: int, x: torch.Tensor, label: int) -> dict:
        """One counts row for input idx.

        Fixed budget: ĉ_A from N0 selection draws (or the label), then N fresh P draws, and for DSRS N
        fresh Q draws (truncated Q's p_T from the P run's bound at α/2, as in the reference).
        ISS: a pilot of n0 draws picks ĉ_A and the sample size; the certificate uses fresh draws only.
        ISS-DSRS also fixes Q from the P pilot and, where that can save draws, draws an n0 Q pilot and plans
        (n_P, n_Q) within a cap; elsewhere it runs n_P = n_Q = N (never dearer than fixed-N DSRS).
        """
        check_finite_input(x, idx)
        a, t0, s = self.args, time.time(), self.sampler
        row = {"idx": idx, "label": label}
        q = None
        if a.iss:
            pilot = s.counts_np(x, self.p_noise, a.iss_n0, self._gen(idx, STREAM_SELECT))
            pred = int(pilot.argmax()) if a.select == "n0" else label
            k0 = int(pilot[pred])
            row.update(n0=a.iss_n0, pilot_n=a.iss_n0, pilot_count=k0)
            if self.q_dist == "none":
                n = n_q = self.planner.sample_size(k0)
            else:
                from certifynet.certify.iss import dsrs_expected_radius_fn, iss_dsrs_budget, iss_dsrs_q_pilot_cap
                q = self._choose_q(k0, a.iss_n0, 2 * a.alpha)  # one-sided pilot bound at α
                cap = iss_dsrs_q_pilot_cap(k0, a.iss_n0, a.N, self.iss_step, a.sigma, a.alpha, a.iss_decline, a.iss)
                n = n_q = a.N  # the Q pilot cannot save draws: the fixed run (cost n0 + 2N)
                row.update(pilot_n_q=0, pilot_count_q=0)
                if cap:  # it can: plan within the cap, so that cost 2·n0 + 2n ≤ n0 + 2N
                    kq0 = int(s.counts_np(x, q[0], a.iss_n0, self._gen(idx, STREAM_Q_PILOT))[pred])
                    row.update(pilot_n_q=a.iss_n0, pilot_count_q=kq0)
                    radius_fn = dsrs_expected_radius_fn(a.sigma, self.dim, a.k, self.q_dist, q[2], a.alpha)
                    n, n_q = iss_dsrs_budget(k0, kq0, a.iss_n0, a.N, self.iss_step, a.alpha, a.iss_decline, a.iss,
                                             radius_fn, n_cap=cap)
        else:
            if a.select == "n0":
                pred = int(s.counts(x, self.p_noise, a.N0, self._gen(idx, STREAM_SELECT)).argmax())
                row["n0"] = a.N0
            else:
                pred, row["n0"] = label, 0
            n = n_q = a.N
        count = int(s.counts(x, self.p_noise, n, self._gen(idx, STREAM_P))[pred]) if n > 0 else 0
        row.update(pred=pred, n=n, count=count)
        if self.q_dist != "none":
            q_noise, kind, q_param = q or self._choose_q(count, n, a.alpha / 2)
            count_q = int(s.counts(x, q_noise, n_q, self._gen(idx, STREAM_Q))[pred]) if n_q > 0 else 0
            row.update(n_q=n_q, count_q=count_q, q_kind=kind, q_param=q_param)
        row["time"] = round(time.time() - t0, 4)
        return row


def open_inputs(dataset: str, split: str, data_dir: str):
    """The dataset and its static facts (shape, classes, d)."""
    return get_dataset(dataset, split, data_dir), dataset_info(dataset)


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
    a, t0, s, noise = sampler.args, time.time(), sampler.sampler, sampler.p_noise
    if a.select == "n0":
        pred, n0 = int(s.counts(x, noise, a.N0, sampler._gen(idx, STREAM_SELECT)).argmax()), a.N0
    else:
        pred, n0 = label, 0
    gen = sampler._gen(idx, STREAM_P)
    state = certifier.run(lambda size, active: int(s.counts(x, noise, size, gen)[pred]))
    codes = certifier.decisions(state)[0]
    lower, upper = float(state.lower[0]), float(state.upper[0])
    predict = pred if lower > 0.5 else -1
    draws = int(state.draws[0])
    return {"idx": idx, "label": label, "predict": predict, "radius": float(certifier.certified_radius(state)[0]),
            "correct": int(predict == label and predict >= 0), "time": round(time.time() - t0, 4),
            "pA_lower": lower, "pA_upper": upper, "n0": n0, "n": draws, "hits": int(state.hits[0]),
            "samples": n0 + draws, "decisions": certifier.format_decisions(codes), "method": "sequential"}
