"""A denoiser run's options (`TrainOptions`): defaults < a KAIR-style JSON options file < command-line flags.

JSON keys and CLI flags share the field names (`lr_gamma` ↔ ``--lr-gamma``); `coerce_option` checks one value
of either source, `resolve_options` merges them, `check_options` checks the whole, and `sigma_spec` turns
the σ keys into the training noise: one σ, one of a list per sample, or σ ~ U[lo, hi].
Errors are one line and name the option (``{epochs}`` fields: ``--epochs`` on the command line).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from certifynet.denoise import DENOISER_PRESETS, classification_loss, l1_loss, mse_loss, stability_loss
from certifynet.errors import CertifyNetError

CHECKPOINT_NAME, LOG_NAME = "denoiser.pth", "log.csv"
MAX_OPTIONS_BYTES = 1 << 20  # an options file is a few hundred bytes; a larger one is not one

OBJECTIVES = {  # objective → loss(x̂, x, y, F)
    "mse": lambda out, x, y, f: mse_loss(out, x),
    "l1": lambda out, x, y, f: l1_loss(out, x),
    "stability": lambda out, x, y, f: stability_loss(f, out, x),
    "classification": lambda out, x, y, f: classification_loss(f, out, y),
}
NEEDS_CLASSIFIER = ("stability", "classification")
SIGMA_KEYS = ("sigma", "sigmas", "sigma_range")


@dataclass
class TrainOptions:
    """Every option of a denoiser run; JSON keys and CLI flags share these names (`lr_gamma` ↔ `--lr-gamma`)."""
    task: str | None = None                  # free run name (KAIR's "task")
    dataset: str = "mnist5k"
    data_dir: str | None = None              # None: <project>/data
    arch: str = "drunet_small"               # a DENOISER_PRESETS name
    objective: str = "mse"
    classifier: str | None = None            # checkpoint of F (frozen); needed by stability/classification
    sigma: float | None = None               # one σ for every sample
    sigmas: list | None = None               # or: one of these per sample, uniformly
    sigma_range: list | None = None          # or: σ ~ U[lo, hi] per sample
    epochs: int = 10
    batch: int = 64
    lr: float = 1e-3
    lr_milestones: list = field(default_factory=list)
    lr_gamma: float = 0.1
    outdir: str | None = None                # None: <project>/results/denoiser
    resume: bool | str = False               # True: outdir/denoiser.pth; a path: that checkpoint
    pretrained_denoiser: str | None = None   # initial weights (e.g. an MSE denoiser before Stab fine-tuning)
    train_subset: int | None = None          # first n training images
    eval_subset: int | None = None           # first n test images for psnr / denoised_acc
    eval_batch: int = 500
    seed: int = 0
    device: str = "auto"
    force: bool = False                      # resume with changed hyper-parameters (recorded in the sidecar)


# (kind, help) per option; kinds: str int float floats ints resume switch.
OPTION_SPECS = {
    "task": ("str", "run name, stored in the checkpoint"),
    "dataset": ("str", "dataset (mnist5k, mnist, cifar10, imagenet)"),
    "data_dir": ("str", "dataset folder (default <project>/data)"),
    "arch": ("str", f"denoiser preset: {', '.join(DENOISER_PRESETS)}"),
    "objective": ("str", f"training loss: {', '.join(OBJECTIVES)}"),
    "classifier": ("str", "classifier checkpoint F (frozen); required by stability/classification"),
    "sigma": ("float", "training noise σ (pixel units in [0,1])"),
    "sigmas": ("floats", "comma list of σ; each sample draws one"),
    "sigma_range": ("floats", "lo,hi: σ ~ U[lo, hi] per sample"),
    "epochs": ("int", "total epochs (a resumed run continues up to this)"),
    "batch": ("int", "training batch size"),
    "lr": ("float", "Adam learning rate"),
    "lr_milestones": ("ints", "comma list of epochs at which lr *= lr_gamma"),
    "lr_gamma": ("float", "MultiStepLR factor"),
    "outdir": ("str", f"output folder ({CHECKPOINT_NAME}, {LOG_NAME}; default <project>/results/denoiser)"),
    "resume": ("resume", f"continue from OUTDIR/{CHECKPOINT_NAME} (or from the given checkpoint)"),
    "pretrained_denoiser": ("str", "initial denoiser weights (e.g. MSE-trained, for Stab fine-tuning)"),
    "train_subset": ("int", "use the first n training images"),
    "eval_subset": ("int", "evaluate on the first n test images"),
    "eval_batch": ("int", "evaluation batch size"),
    "seed": ("int", "seed of init, shuffling and noise"),
    "device": ("str", "auto, cpu, cuda, cuda:1, ..."),
    "force": ("switch", "with --resume: continue although lr, batch, ... differ from the checkpoint's (each "
                        "change is recorded in log.csv.meta.json)"),
}
CHOICES = {"arch": tuple(DENOISER_PRESETS), "objective": tuple(OBJECTIVES)}


# ---------------------------------------------------------------- options
def _number_list(value, kind: str, where: str, fields: tuple[str, ...] = ()) -> list:
    cast = int if kind == "ints" else float
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if not isinstance(value, (list, tuple)):
        raise CertifyNetError(f"{where}: expected a list or 'a,b,...', got {value!r}", *fields)
    try:
        out = [cast(v) for v in value if not isinstance(v, bool)]
    except (TypeError, ValueError, OverflowError):
        raise CertifyNetError(f"{where}: expected numbers, got {value!r}", *fields) from None
    if len(out) != len(value) or not all(math.isfinite(v) for v in out) or (
            kind == "ints" and any(isinstance(v, float) and v != int(v) for v in value)):
        raise CertifyNetError(f"{where}: expected {'integers' if kind == 'ints' else 'numbers'}, got {value!r}",
                              *fields)
    return out


def _scalar(value, kind: str, where: str, fields: tuple[str, ...]):
    """A finite int or float option; a bool, NaN, ±inf, or a fractional value for an int, is refused."""
    cast, what = (int, "an integer") if kind == "int" else (float, "a finite number")
    if isinstance(value, bool) or (isinstance(value, float) and kind == "int" and
                                   (not math.isfinite(value) or value != int(value))):
        raise CertifyNetError(f"{where}: expected {what}, got {value!r}", *fields)
    try:
        out = cast(value)
    except (TypeError, ValueError, OverflowError):
        raise CertifyNetError(f"{where}: expected {what}, got {value!r}", *fields) from None
    if not math.isfinite(out):
        raise CertifyNetError(f"{where}: expected {what}, got {value!r}", *fields)
    return out


def coerce_option(name: str, value, where: str | None = None):
    """Check/convert one option value (a JSON value or a CLI string) to its type; None stays None.
    Errors name the option as `<where> 'name'`, or as the argument `{name}` (the CLI's flag) when `where` is None."""
    if name not in OPTION_SPECS:
        raise CertifyNetError(f"{where or 'option'}: unknown option '{name}'")
    kind = OPTION_SPECS[name][0]
    fields = (name,) if where is None else ()
    where = f"{{{name}}}" if where is None else f"{where} '{name}'"
    if value is None:
        return [] if name == "lr_milestones" else None
    if kind in ("floats", "ints"):
        return _number_list(value, kind, where, fields)
    if kind == "resume":
        if isinstance(value, (bool, str)):
            return value
        raise CertifyNetError(f"{where}: expected true/false or a checkpoint path, got {value!r}", *fields)
    if kind == "switch":
        if isinstance(value, bool):
            return value
        raise CertifyNetError(f"{where}: expected true or false, got {value!r}", *fields)
    if kind == "str":
        if not isinstance(value, str):
            raise CertifyNetError(f"{where}: expected a string, got {value!r}", *fields)
        if name in CHOICES and value not in CHOICES[name]:
            raise CertifyNetError(f"{where}: {value!r} is not one of {', '.join(CHOICES[name])}", *fields)
        return value
    return _scalar(value, kind, where, fields)


def _no_constant(name: str):
    """JSON's NaN / Infinity: not a valid option value."""
    raise json.JSONDecodeError(f"{name} is not a valid value", name, 0)


def read_options_file(path: str) -> dict:
    """KAIR-style JSON options → {name: value}. Lines starting with `//` are comments, keys starting with `_`
    are ignored; an unknown key or invalid JSON (with its line number) is a one-line error."""
    if not os.path.isfile(path):
        raise CertifyNetError(f"options file '{path}' not found")
    if os.path.getsize(path) > MAX_OPTIONS_BYTES:
        raise CertifyNetError(f"options file '{path}' is {os.path.getsize(path):,} bytes: not an options file "
                              f"(at most {MAX_OPTIONS_BYTES:,})")
    try:
        with open(path, encoding="utf-8") as f:
            lines = ["" if ln.lstrip().startswith("//") else ln for ln in f.read().splitlines()]
    except UnicodeDecodeError:
        raise CertifyNetError(f"options file '{path}' is not UTF-8 text (a JSON object is expected)") from None
    try:
        data = json.loads("\n".join(lines), parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise CertifyNetError(f"options file '{path}' is not valid JSON: {e.msg} at line {e.lineno}, "
                              f"column {e.colno}") from None
    if not isinstance(data, dict):
        raise CertifyNetError(f"options file '{path}' must hold a JSON object {{...}}")
    unknown = [k for k in data if k not in OPTION_SPECS and not k.startswith("_")]
    if unknown:
        raise CertifyNetError(f"options file '{path}': unknown key '{unknown[0]}' "
                              f"(known: {', '.join(OPTION_SPECS)})")
    return {k: coerce_option(k, v, f"options file '{path}':") for k, v in data.items() if not k.startswith("_")}


def resolve_options(file_opts: dict | None = None, cli_opts: dict | None = None) -> TrainOptions:
    """defaults < file < CLI. A σ flag on the CLI replaces every σ key of the file (sigma/sigmas/sigma_range)."""
    file_opts, cli_opts = dict(file_opts or {}), dict(cli_opts or {})
    if any(k in cli_opts for k in SIGMA_KEYS):
        for k in SIGMA_KEYS:
            file_opts.pop(k, None)
    return TrainOptions(**{**file_opts, **cli_opts})


def sigma_spec(opts: TrainOptions) -> dict:
    """The training σ as {"mode": "fixed"|"choice"|"uniform", "values": [...]} (stored in the checkpoint)."""
    given = [k for k in SIGMA_KEYS if getattr(opts, k) not in (None, [])]
    if len(given) != 1:
        raise CertifyNetError("set the training noise with exactly one of {sigma}, {sigmas}, {sigma_range}"
                              + (f" (got {', '.join(given)})" if given else ""), *SIGMA_KEYS)
    if opts.sigma is not None:
        spec = {"mode": "fixed", "values": [float(opts.sigma)]}
    elif opts.sigmas:
        spec = {"mode": "choice", "values": [float(s) for s in opts.sigmas]}
    else:
        if len(opts.sigma_range) != 2 or not 0 <= opts.sigma_range[0] < opts.sigma_range[1] < math.inf:
            raise CertifyNetError(f"{{sigma_range}} must be lo,hi with 0 <= lo < hi, got {opts.sigma_range}",
                                  "sigma_range")
        return {"mode": "uniform", "values": [float(v) for v in opts.sigma_range]}
    if not all(0 < s < math.inf for s in spec["values"]):
        raise CertifyNetError(f"training σ must be > 0, got {spec['values']}")
    return spec


def eval_sigma(spec: dict) -> float:
    """σ for psnr/denoised_acc: the fixed σ, the middle of the sorted list, or (lo + hi)/2."""
    v = sorted(spec["values"])
    return (v[0] + v[1]) / 2 if spec["mode"] == "uniform" else v[len(v) // 2]


def check_options(opts: TrainOptions, files: bool = True) -> dict:
    """Validate cross-field constraints (and, with `files`, that the input checkpoints exist); returns the σ
    spec."""
    for name in ("epochs", "batch", "eval_batch"):
        if getattr(opts, name) < 1:
            raise CertifyNetError(f"{{{name}}} must be >= 1, got {getattr(opts, name)}", name)
    for name in ("train_subset", "eval_subset"):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            raise CertifyNetError(f"{{{name}}} must be >= 1", name)
    if not 0 < opts.lr < math.inf or not 0 < opts.lr_gamma < math.inf:
        raise CertifyNetError(f"{{lr}} and {{lr_gamma}} must be > 0, got {opts.lr}, {opts.lr_gamma}", "lr", "lr_gamma")
    if opts.objective in NEEDS_CLASSIFIER and not opts.classifier:
        raise CertifyNetError(f"{{objective}} {opts.objective} needs {{classifier}} CKPT (the frozen classifier F)",
                              "objective", "classifier")
    for name in ("classifier", "pretrained_denoiser"):
        path = getattr(opts, name)
        if files and path and not os.path.isfile(path):
            raise CertifyNetError(f"{{{name}}} '{path}' not found", name)
    if opts.force and not opts.resume:
        raise CertifyNetError("{force} does not apply without {resume} (it lets a resumed run change "
                              "hyper-parameters)", "force", "resume")
    return sigma_spec(opts)
