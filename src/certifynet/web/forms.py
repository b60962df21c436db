"""The certify form: parse and check every field (the CLI's defaults and checks), then the CLI argv.

A bad value raises CertifyNetError with one line, before any file exists. The job then runs exactly the
commands returned by `cli_argv`, which the job page also shows.
"""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass, field

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.noise import check_k

METHODS = {"np": "NP (Cohen et al.)", "dsrs": "DSRS", "iss-np": "ISS-NP", "iss-dsrs": "ISS-DSRS"}
Q_DISTS = ("truncated", "rescaled")
ISS_MODES = ("absolute", "relative")
INPUT_KINDS = ("gallery", "upload", "draw", "batch")
INVERT = ("auto", "yes", "no")
IMAGE_UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


def cli_defaults() -> dict:
    """The CLI's defaults for the form's fields (read from certify.py's parser, so they cannot drift)."""
    from certifynet.cli.certify import build_parser
    p = build_parser()
    keys = ("N0", "N", "alpha", "batch", "seed", "k", "q_percentile", "iss_decline", "iss_n0", "select")
    out = {k: p.get_default(k) for k in keys}
    out.update(sigma=0.25, method=p.get_default("method"), q_dist="truncated", iss="absolute", q_sigma="")
    return out


def field_text(form, name: str) -> str:
    """A form field, stripped ('' when absent)."""
    return (form.get(name) or "").strip()


def _number(form, name: str, flag: str, cast, default=None):
    text = field_text(form, name)
    if not text:
        if default is None:
            raise CertifyNetError(f"{flag} is required")
        return default
    try:
        value = cast(text)
    except (TypeError, ValueError, OverflowError):
        kind = "an integer" if cast is int else "a number"
        raise CertifyNetError(f"{flag} must be {kind}, got '{text[:40]}'") from None
    if cast is float and math.isnan(value):
        raise CertifyNetError(f"{flag} must be a number, got '{text[:40]}'")
    return value


def _choice(form, name: str, flag: str, choices, default=None) -> str:
    value = field_text(form, name) or default
    if value not in choices:
        raise CertifyNetError(f"{flag} must be one of {', '.join(choices)}, got '{(value or '')[:40]}'")
    return value


@dataclass
class Settings:
    """Checked smoothing settings: what sample.py/certify.py take."""
    method: str
    sigma: float
    k: int
    N0: int
    N: int
    alpha: float
    batch: int
    seed: int
    select: str
    q_dist: str = "none"
    q_percentile: str = "x"
    q_sigma: float | None = None
    iss: str | None = None
    iss_decline: float = 0.05
    iss_n0: int = 2000

    @property
    def dsrs(self) -> bool:
        return self.method.endswith("dsrs")

    def passes_per_input(self) -> tuple:
        """(forward passes per input, exact?): N0 + N (+ N for Q); ISS: at most pilot + N (+ Q pilot + N)."""
        if self.iss:
            return (self.iss_n0 + self.N) * (2 if self.dsrs else 1), False
        return (self.N0 if self.select == "n0" else 0) + self.N * (2 if self.dsrs else 1), True

    def noise_argv(self) -> list:
        argv = ["--sigma", self.sigma, *(["--k", self.k] if self.k else []), "--N", self.N,
                "--alpha", self.alpha, "--batch", self.batch, "--seed", self.seed]
        if self.select != "n0":
            argv += ["--select", self.select]
        elif not self.iss:  # ISS: the pilot picks the class; --select label: the label is counted
            argv += ["--N0", self.N0]
        if self.dsrs:
            argv += ["--q-dist", self.q_dist]
            if self.q_dist == "truncated":
                argv += ["--q-percentile", self.q_percentile]
            elif self.q_sigma is not None:
                argv += ["--q-sigma", self.q_sigma]
        if self.iss:
            argv += ["--iss", self.iss, "--iss-decline", self.iss_decline, "--iss-n0", self.iss_n0]
        return argv


def parse_settings(form, dim: int) -> Settings:
    """Settings from the form, checked by the CLI itself: the fields become sample.py's argv, which goes through
    sample.py's parser and `check_run_args` (so the form accepts exactly what the command line accepts)."""
    from certifynet.cli import parse_strict
    from certifynet.cli.sample import build_parser
    from certifynet.pipeline import check_run_args
    d = cli_defaults()
    method = _choice(form, "method", "method", tuple(METHODS), d["method"])
    s = Settings(method, _number(form, "sigma", "--sigma", float), _number(form, "k", "--k", int, d["k"]),
                 _number(form, "N0", "--N0", int, d["N0"]), _number(form, "N", "--N", int, d["N"]),
                 _number(form, "alpha", "--alpha", float, d["alpha"]), _number(form, "batch", "--batch", int, d["batch"]),
                 _number(form, "seed", "--seed", int, d["seed"]),
                 _choice(form, "select", "--select", ("n0", "label"), d["select"]))
    if s.dsrs:
        s.q_dist = _choice(form, "q_dist", "--q-dist", Q_DISTS, d["q_dist"])
        if s.q_dist == "truncated":
            s.q_percentile = field_text(form, "q_percentile") or d["q_percentile"]
        elif field_text(form, "q_sigma"):
            s.q_sigma = _number(form, "q_sigma", "--q-sigma", float)
    if method.startswith("iss"):
        s.iss = _choice(form, "iss", "--iss", ISS_MODES, d["iss"])
        s.iss_decline = _number(form, "iss_decline", "--iss-decline", float, d["iss_decline"])
        s.iss_n0 = _number(form, "iss_n0", "--iss-n0", int, min(d["iss_n0"], s.N))  # the pilot cannot exceed N
    check_run_args(parse_strict(build_parser(), ["--model", "-", *map(str, s.noise_argv())]), "sample")
    check_k(dim, s.k)
    return s


@dataclass
class InputChoice:
    """What to certify: a gallery image, an uploaded/drawn image (array to store), or the first M test images."""
    kind: str
    dataset: str
    idx: int = 0
    count: int = 1
    label: int = -1
    array: object = field(default=None, repr=False)
    suffix: str = ""
    note: str = ""
    filename: str = ""


def parse_label(form, num_classes: int) -> int:
    text = field_text(form, "label")
    if not text:
        return -1
    label = _number(form, "label", "true label", int)
    if not 0 <= label < num_classes:
        raise CertifyNetError(f"true label must be a class in [0, {num_classes - 1}] (or empty: unknown), got {label}")
    return label


def parse_input(form, files, model_dataset: str, gallery) -> InputChoice:
    """The input part of the form, checked against the model's dataset and the images present."""
    from certifynet.web.images import convert_drawing, convert_image
    kind = _choice(form, "input_kind", "input", INPUT_KINDS, "gallery")
    info = dataset_info(model_dataset)
    if kind in ("gallery", "batch"):
        choices = gallery.datasets_for(model_dataset)
        if not choices:
            raise CertifyNetError(f"no {model_dataset} test images under the data folder; upload or draw an image")
        dataset = _choice(form, "dataset", "dataset", choices, choices[0])
        size = gallery.size(dataset)
        if kind == "gallery":
            if not field_text(form, "idx"):
                raise CertifyNetError("pick a test image from the gallery")
            idx = _number(form, "idx", "gallery image", int)
            if not 0 <= idx < size:
                raise CertifyNetError(f"gallery image {idx} is not in the {dataset} test set (0 to {size - 1})")
            return InputChoice("gallery", dataset, idx=idx, label=gallery.item(dataset, idx)[1])
        count = _number(form, "count", "number of test images", int, 100)
        if not 1 <= count <= size:
            raise CertifyNetError(f"number of test images must be in [1, {size}], got {count}")
        return InputChoice("batch", dataset, count=count)
    label = parse_label(form, info.num_classes)
    if kind == "upload":
        f = files.get("image")
        name = os.path.basename((f.filename or "").replace("\\", "/")) if f else ""
        if not name:
            raise CertifyNetError("choose an image file to upload (PNG, JPEG or .npy)")
        if not name.lower().endswith(IMAGE_UPLOAD_SUFFIXES):
            raise CertifyNetError(f"'{name[:60]}' is not a .png, .jpg or .npy file")
        data = f.read()
        if not data:
            raise CertifyNetError(f"'{name[:60]}' is empty")
        invert = _choice(form, "invert", "invert", INVERT, "auto")
        array, suffix, note = convert_image(data, name[:60], model_dataset, invert)
        return InputChoice("upload", model_dataset, label=label, array=array, suffix=suffix, note=note, filename=name)
    array, suffix, note = convert_drawing(field_text(form, "drawing"), model_dataset)
    return InputChoice("draw", model_dataset, label=label, array=array, suffix=suffix, note=note)


def cli_argv(model: str, denoiser: str | None, settings: Settings, choice: InputChoice, job_dir: str,
             data_dir: str) -> dict:
    """{stage: argv} for sample.py, certify.py --counts and (batches) analyze.py; paths relative to the root."""
    counts, log = os.path.join(job_dir, "counts.csv"), os.path.join(job_dir, "certify.tsv")
    sample = ["--model", model, "--dataset", choice.dataset]
    if denoiser:
        sample += ["--denoiser", denoiser]
    if choice.kind in ("gallery", "batch"):
        if data_dir != "data":
            sample += ["--data-dir", data_dir]
        sample += ["--start", choice.idx, "--max", 1] if choice.kind == "gallery" else ["--max", choice.count]
    else:
        sample += ["--image", os.path.join(job_dir, "input" + choice.suffix)]
        if choice.label >= 0:
            sample += ["--image-label", choice.label]
    stages = {"sample": [*sample, *settings.noise_argv(), "--out", counts],
              "certify": ["--counts", counts, "--method", settings.method, "--alpha", settings.alpha, "--out", log]}
    if choice.kind == "batch":
        stages["analyze"] = [log, "--out", os.path.join(job_dir, "analysis")]
    return {stage: [str(a) for a in argv] for stage, argv in stages.items()}


def command_lines(argv: dict) -> str:
    """The job as shell commands, one per stage (run from the app's root folder)."""
    return "\n".join(f"python scripts/{stage}.py {shlex.join(args)}" for stage, args in argv.items())
