"""quickstart.py: the whole toolkit on the bundled real MNIST digits (mnist5k), offline, in a few minutes.

Each stage runs the same command a user would type (printed with a `$`), in-process:
train (Gaussian augmentation) → reload and test → sample counts → certify with every method (NP, DSRS,
ISS-NP, ISS-DSRS, sequential at fixed radii) → attack the certificates (audit, certified vs empirical) →
denoised smoothing (a clean classifier alone, behind a stability-trained DRUNet and behind a small diffusion
model of our own, at σ = 0.5 and 1.0) → tables and plots. Everything is written under --out (default
results/quickstart/).

Every flag, and every stage's command, is checked before anything is written or deleted (`check_flags`). The
folder is then held for the whole run (`records.guard.claim_folder`): a folder that is not a quickstart's is
refused untouched, a quickstart of other settings is refused naming them, and --fresh deletes only what
earlier quickstarts wrote into it (the entries its marker lists).
"""
from __future__ import annotations

import contextlib
import os
import shlex
import time

import torch

from certifynet.cli import CliParser, one_line_errors, parse_strict
from certifynet.errors import MAX_SAMPLES, CertifyNetError, check_sigma
from certifynet.paths import default_path, safe_filename
from certifynet.records.guard import FolderClaim, check_folder, claim_folder

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_N = 200  # ISS-DSRS runs a pilot of 100 draws within N/2


class Demo:
    """Runs stages, echoing each command and timing it. With `checking`, nothing runs: each stage's command is
    only parsed and checked as that script would check it (`check_stage`)."""

    def __init__(self, out: str, fast: bool, checking: bool = False, claim: FolderClaim | None = None):
        self.out, self.fast, self.t0, self.logs, self.labels = out, fast, time.time(), [], []
        self.checking, self.claim = checking, claim

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def run(self, script: str, argv):
        import importlib
        argv = [str(a) for a in argv]
        if self.checking:
            check_stage(script, argv)
            return
        print(f"\n$ python scripts/{script}.py {' '.join(shlex.quote(a) for a in argv)}", flush=True)
        t = time.time()
        try:
            rc = importlib.import_module(f"certifynet.cli.{script}").main(argv)
        finally:
            if self.claim is not None:
                self.claim.record()  # what this stage wrote is the quickstart's (--fresh deletes it)
        if rc:
            raise SystemExit(rc)
        print(f"  [{time.time() - t:.1f}s, total {time.time() - self.t0:.0f}s]", flush=True)

    def certify(self, counts, method, label, alpha=0.001):
        log = self.path(f"{safe_filename(label)}.tsv")  # ASCII, no spaces; the label lives in the sidecar
        self.run("certify", ["--counts", counts, "--method", method, "--alpha", alpha, "--out", log, "--label", label])
        self.logs.append(log)
        self.labels.append(label)
        self.table([log], [label])
        return log

    def table(self, logs, labels):
        if self.checking:
            return
        from certifynet.analysis import read_logs, summarize, to_markdown
        df = summarize(read_logs(logs, labels), RADII)
        keep = [c for c in df.columns if c.startswith("r=") or c in ("log", "ACR", "abstain", "samples/input")]
        print(to_markdown(df[keep], bold_best=False))


def noisy_accuracy(model, data, sigma, seed=0):
    """Accuracy of the base classifier on the test digits, clean (σ=0) or under N(0, σ²I)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    with torch.inference_mode():
        pred = model(x + sigma * torch.randn(x.shape, generator=g)).argmax(1)
    return float((pred == y).float().mean())


def build_parser():
    p = CliParser(prog="quickstart.py", description=__doc__)
    p.add_argument("--out", default=default_path("results/quickstart"), help="output folder")
    p.add_argument("--sigma", type=float, default=0.25, help="σ of training and of every smoothing run")
    p.add_argument("--digits", type=int, default=100, help="test digits to certify")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of the Gaussian LeNet")
    p.add_argument("--N", type=int, default=2000, help="NP sample size (DSRS uses N/2 from P and N/2 from Q)")
    p.add_argument("--denoiser-sigma", type=float, nargs="+", default=[0.5, 1.0],
                   help="σ of the denoised-smoothing stage (at σ=0.25 a clean LeNet is already robust on MNIST)")
    p.add_argument("--skip-denoiser", action="store_true", help="leave out the denoised-smoothing stage")
    p.add_argument("--skip-diffusion", action="store_true",
                   help="in the denoised-smoothing stage, leave out the diffusion model (DRUNet only)")
    p.add_argument("--fresh", action="store_true",
                   help="delete what earlier quickstarts wrote into --out first (nothing else), also when their "
                        "settings differ")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars in the stages")
    return p


@one_line_errors
def main(argv=None):
    a = build_parser().parse_args(argv)
    check_flags(a)
    with open_demo(a) as demo:
        run_demo(demo, a)
    print(f"quickstart finished in {time.time() - demo.t0:.0f}s")


def run_demo(demo: Demo, a) -> None:
    """Every stage, in order (with `demo.checking`, every stage's command is only checked)."""
    ckpt = train_and_test(demo, a)
    common = ["--model", ckpt, "--sigma", a.sigma, "--max", a.digits, "--batch", 500]
    certify_every_method(demo, a, common)
    seq_label = sequential_stage(demo, a, common)
    attack_certificates(demo, a, ckpt)
    if not a.skip_denoiser:
        denoised_smoothing(demo, a)
    if demo.checking:
        return
    summarize(demo, a, seq_label)
    where_methods_differ(demo, a)


def settings(a) -> dict:
    """What makes two quickstarts the same run (its folder's marker records them)."""
    return {"sigma": a.sigma, "digits": a.digits, "epochs": a.epochs, "N": a.N, "denoiser_sigma": a.denoiser_sigma}


def check_flags(a) -> None:
    """Every flag, the output folder and every stage's command, before anything is written or deleted."""
    check_sigma(a.sigma)
    for s in a.denoiser_sigma:
        check_sigma(s, "denoiser_sigma")
    for name, low in (("digits", 1), ("epochs", 0)):
        if getattr(a, name) < low:
            raise CertifyNetError(f"{{{name}}} must be >= {low}, got {getattr(a, name)}", name)
    if not MIN_N <= a.N <= MAX_SAMPLES:
        raise CertifyNetError(f"{{N}} must be in [{MIN_N}, {MAX_SAMPLES:.0e}] (the ISS-DSRS stage runs a pilot of "
                              f"100 draws within N/2), got {a.N}", "N")
    check_folder(a.out, "quickstart", settings(a), name="out", force=a.fresh, force_name="fresh")
    run_demo(Demo(a.out, fast=True, checking=True), a)


def check_stage(script: str, argv: list[str]) -> None:
    """Parse and check one stage's command as the script would, running nothing (its input files need not
    exist yet); a refusal names the stage."""
    try:
        _check_stage(script, argv)
    except CertifyNetError as e:
        raise CertifyNetError(f"these settings would make the quickstart's {script}.py stage fail: "
                              f"{e.render(cli=True)}") from None


def _check_stage(script: str, argv: list[str]) -> None:
    import importlib

    from certifynet.sampling.config import SamplingConfig
    module = importlib.import_module(f"certifynet.cli.{script}")
    args = parse_strict(module.build_parser(), argv)
    if script == "train":
        from certifynet.training import TrainConfig, prepare_config
        module.check_args(args)
        prepare_config(TrainConfig.from_namespace(args))
    elif script == "train_denoiser":
        from certifynet.denoise.options import check_options, coerce_option, read_options_file, resolve_options
        cli = {k: v if v is True else coerce_option(k, v) for k, v in vars(args).items()
               if k not in ("opt", "no_progress", "given")}
        check_options(resolve_options(read_options_file(args.opt), cli), files=False)
    elif script == "attack":
        module.check_args(args)
    elif script in ("sample", "certify"):
        config = SamplingConfig.from_namespace(args)
        if config.counts:
            from certifynet.errors import check_alpha
            check_alpha(config.alpha)
        elif config.sequential:
            from certifynet.sampling.stages import check_sequential
            check_sequential(config)
            config.validate("certify")
        else:
            config.validate(script)


@contextlib.contextmanager
def open_demo(a):
    """The demo's folder, held while the demo runs (--fresh first deletes what earlier quickstarts wrote into
    it), and its settings (progress, threads)."""
    with claim_folder(a.out, "quickstart", settings(a), name="out", force=a.fresh, force_name="fresh") as claim:
        if a.fresh:
            claim.remove_own()
        if not a.progress:
            os.environ["CERTIFYNET_NO_PROGRESS"] = "1"
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
        print(f"Certify-Net quickstart on mnist5k (4,000 train / 1,000 test real MNIST digits), σ={a.sigma}; "
              f"outputs in {a.out}/")
        yield Demo(a.out, fast=True, claim=claim)


def train_and_test(demo: Demo, a) -> str:
    """1. Train a Gaussian-augmented LeNet, reload it, test it clean and under noise; its checkpoint."""
    s = a.sigma
    model_dir = demo.path("lenet_gaussian")
    demo.run("train", ["mnist5k", "lenet", "--noise", s, "--epochs", a.epochs, "--batch", 64, "--lr", 0.01,
                       "--lr_step_size", max(1, a.epochs * 2 // 3), "--workers", 0, "--outdir", model_dir, "--resume"])
    ckpt = os.path.join(model_dir, "checkpoint.pth")
    if demo.checking:
        return ckpt
    from certifynet.data import get_dataset
    from certifynet.models import load_checkpoint
    model = load_checkpoint(ckpt).model
    test = get_dataset("mnist5k", "test")
    print(f"\nreloaded {ckpt}: clean test accuracy {noisy_accuracy(model, test, 0.0):.3f}, "
          f"under N(0,{s}²I) {noisy_accuracy(model, test, s):.3f} (1,000 test digits)")
    return ckpt


def certify_every_method(demo: Demo, a, common):
    """2.-4. Sample and certify with NP, DSRS, ISS-NP and ISS-DSRS (labels in this order: see `summarize`)."""
    s, n = a.sigma, a.N
    # 2. Neyman–Pearson (Cohen): N0 selection + N estimation draws
    counts_np = demo.path("counts_np.csv")
    demo.run("sample", [*common, "--N0", 100, "--N", n, "--out", counts_np])
    demo.certify(counts_np, "np", f"NP σ={s} N={n}")

    # 3. DSRS: P = N(0,σ²I), Q = P truncated to a ball (heuristic x+: where every P draw hits, pool a
    #    second P run instead), N/2 draws each at α/2 each
    counts_dsrs = demo.path("counts_dsrs.csv")
    demo.run("sample", [*common, "--N0", 100, "--N", n // 2, "--q-dist", "truncated", "--q-percentile", "x+",
                        "--out", counts_dsrs])
    demo.certify(counts_dsrs, "dsrs", f"DSRS σ={s} N={n // 2}+{n // 2}")

    # 4. ISS: input-specific sample sizes (a pilot picks ĉ_A and the size; the bound uses fresh draws)
    iss = ["--N", n, "--iss", "absolute", "--iss-decline", 0.05, "--iss-n0", 100]
    counts_iss = demo.path("counts_iss_np.csv")
    demo.run("sample", [*common, *iss, "--out", counts_iss])
    demo.certify(counts_iss, "iss-np", f"ISS-NP σ={s} ε=0.05")
    counts_iss_dsrs = demo.path("counts_iss_dsrs.csv")
    demo.run("sample", [*common, *iss[:1], n // 2, *iss[2:], "--q-dist", "truncated", "--q-percentile", "x",
                        "--out", counts_iss_dsrs])
    demo.certify(counts_iss_dsrs, "iss-dsrs", f"ISS-DSRS σ={s} ε=0.05")


def summarize(demo: Demo, a, seq_label: str):
    """5. Tables and plots for every run, and what ISS and sequential cost in forward passes."""
    from certifynet.analysis import summarize_runs, to_markdown
    digits, n = a.digits, a.N
    print(f"\n== all runs ({digits} digits, α=0.001) ==")
    summary = summarize_runs(demo.logs, a.out, labels=demo.labels, radii=RADII,
                             title=f"mnist5k, LeNet, {digits} test digits")
    keep = [c for c in summary.columns  # dataset, sigma: bold only among comparable runs (not shown)
            if c.startswith("r=") or c in ("log", "ACR", "abstain", "samples/input", "dataset", "sigma")]
    print(to_markdown(summary[keep], bold_best=True))
    passes = dict(zip(summary["log"], summary["samples/input"]))
    print(f"\nISS forward passes per input: NP {passes[demo.labels[0]]:.0f} → ISS-NP {passes[demo.labels[2]]:.0f}; "
          f"DSRS {passes[demo.labels[1]]:.0f} → ISS-DSRS {passes[demo.labels[3]]:.0f} "
          f"(ISS saves more at the usual N=100,000: benchmarks/bench_iss.py)")
    print(f"sequential at the fixed radii {', '.join(f'{r:g}' for r in RADII[1:])}: {passes[seq_label]:.0f} forward "
          f"passes per input, capped at N0 + N = {100 + n} (benchmarks/bench_sequential.py)")
    print(f"\nplots: {a.out}/certified_accuracy.png (.pdf); tables: {a.out}/table.md/.tex/.csv; "
          f"report: {a.out}/report.md")


def sequential_stage(demo: Demo, a, common):
    """Sequential NP at the demo's radii: stop each digit once every radius is decided (certify.py's default rule:
    the calibrated group-sequential test, valid at α; futility 'projected' at γ = 0.001)."""
    label = f"Sequential σ={a.sigma} cap N={a.N}"
    log = demo.path("sequential.tsv")
    demo.run("certify", [*common, "--N0", 100, "--N", a.N, "--sequential", "--radii", *RADII[1:], "--out", log,
                         "--label", label])
    demo.logs.append(log)
    demo.labels.append(label)
    demo.table([log], [label])
    return label


def denoised_smoothing(demo: Demo, a):
    """Clean-trained LeNet alone, behind a stability-trained DRUNet (Salman et al. 2020; one for every σ of the
    stage) and behind our small DDPM (one shot, Carlini et al. 2023; one model for every σ), at each σ."""
    n = a.N
    clean_dir = demo.path("lenet_clean")
    demo.run("train", ["mnist5k", "lenet", "--noise", 0, "--epochs", 5, "--batch", 64, "--lr", 0.01,
                       "--workers", 0, "--outdir", clean_dir, "--resume"])
    clean = os.path.join(clean_dir, "checkpoint.pth")
    sigmas = ",".join(f"{s:g}" for s in a.denoiser_sigma)
    den_dir = demo.path(f"drunet_stab_{safe_filename(sigmas)}")
    demo.run("train_denoiser", ["--opt", "denoiser/options/train_drunet_small_mnist_stab.json",
                                "--classifier", clean, "--sigmas", sigmas, "--outdir", den_dir, "--resume"])
    denoisers = [("DRUNet", os.path.join(den_dir, "denoiser.pth"))]
    if not a.skip_diffusion:
        ddpm_dir = demo.path("ddpm_quick")
        if not demo.checking:
            print("\ndiffusion model: a smaller UNet than the benchmark's (--size quick, 71k parameters, 3 epochs: "
                  "about a minute on 2 cores; benchmarks/bench_diffusion.py trains the 280k-parameter bench model "
                  "for 12 epochs)")
        demo.run("train_ddpm", ["--size", "quick", "--epochs", 3, "--outdir", ddpm_dir, "--resume"])
        denoisers.append(("DDPM", ddpm_dir))
    n_den = max(100, n // 10)  # a DRUNet or DDPM forward pass costs ~20 LeNet ones
    for s in a.denoiser_sigma:
        common = ["--model", clean, "--sigma", s, "--max", a.digits, "--batch", n_den, "--N0", 50, "--N", n_den]
        for name, path in [("", None), *denoisers]:
            counts = demo.path(f"counts_{name.lower() or 'clean'}_{s:g}.csv")
            demo.run("sample", [*common, *(["--denoiser", path] if path else []), "--out", counts])
            demo.certify(counts, "np", f"clean LeNet{' + ' + name if name else ''} σ={s} N={n_den}")


def where_methods_differ(demo: Demo, a):
    """The figures where the runs differ: forward passes per input (cost.png, written with the tables: ISS
    saves there) and, with the denoiser stage, the denoised-smoothing runs (denoisers.png, a panel per σ) and
    the denoisers' lift over the clean classifier at the stage's largest σ (denoiser_lift.png)."""
    from certifynet.analysis import plot_certified_accuracy, plot_gain, read_logs
    print(f"cost: {a.out}/cost.png (.pdf): forward passes per input of every run, and ACR against them")
    if not a.skip_denoiser:
        per_sigma = 1 + 1 + (not a.skip_diffusion)   # clean, + DRUNet, + DDPM
        logs = read_logs(demo.logs[-per_sigma * len(a.denoiser_sigma):],
                         demo.labels[-per_sigma * len(a.denoiser_sigma):])
        plot_certified_accuracy(logs, demo.path("denoisers"),
                                title="denoised smoothing: clean LeNet alone, + DRUNet, + DDPM (ours)")
        print(f"denoisers: {a.out}/denoisers.png (.pdf): certified accuracy of the clean LeNet alone and behind each "
              f"denoiser, a panel per σ")
        top = logs[-per_sigma:]
        plot_gain(top[0], top[1:], demo.path("denoiser_lift"),
                  title=f"denoised smoothing, σ={a.denoiser_sigma[-1]:g}: gain over the clean LeNet")
        print(f"denoiser lift: {a.out}/denoiser_lift.png (.pdf): each denoiser's gain in certified accuracy")


def attack_certificates(demo: Demo, a, ckpt):
    """Attack the certificates (SmoothAdv PGD on the smoothed classifier): a short audit of the NP log at ε = R,
    and the empirical robust accuracy of 20 digits beside their certified accuracy (docs/attack.md)."""
    np_log = demo.logs[0]
    fast = ["--m", 8, "--steps", 10, "--N", 1000, "--batch", 400, "--alpha", 0.001]
    demo.run("attack", ["--log", np_log, "--model", ckpt, "--max", min(a.digits, 10), *fast,
                        "--out", demo.path("audit_np.tsv")])
    curve = demo.path("attack_curve.tsv")
    demo.run("attack", ["--model", ckpt, "--sigma", a.sigma, "--eps", 0, 0.25, 0.5, 0.75, 1.0,
                        "--max", min(a.digits, 20), *fast, "--out", curve])
    demo.run("analyze", [np_log, "--empirical", curve, "--out", demo.path("attack"),
                         "--title", f"certified vs empirical (attack), σ={a.sigma}"])
