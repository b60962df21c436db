"""The certify form: parse and check every field into a `SamplingConfig` (the CLI's defaults and checks),
then the job's stages.

A bad value raises CertifyNetError with one line, before any file exists. `job_stages` gives the stages the
job's worker runs (each from its stored configuration) and `cli_argv` the same stages as the CLI commands the
job page shows: both come from one configuration per stage (`SamplingConfig.to_argv`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import shlex
from dataclasses import dataclass, field

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.noise import check_k
from certifynet.sampling.config import SamplingConfig

METHODS = {"np": "NP (Cohen et al.)", "dsrs": "DSRS", "iss-np": "ISS-NP", "iss-dsrs": "ISS-DSRS"}
Q_DISTS = ("truncated", "rescaled")
ISS_MODES = ("absolute", "relative")
INPUT_KINDS = ("gallery", "upload", "draw", "batch")
INVERT = ("auto", "yes", "no")
IMAGE_UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


def cli_defaults() -> dict:
    """The form's defaults: the CLI's, read from `SamplingConfig` (one definition, so they cannot drift)."""
    d = SamplingConfig()
    keys = ("N0", "N", "alpha", "batch", "seed", "k", "q_percentile", "iss_decline", "iss_n0", "select")
    out = {k: getattr(d, k) for k in keys}
    out.update(sigma=0.25, method=d.method, q_dist="truncated", iss="absolute", q_sigma="")
    return out


def field_text(form, name: str) -> str:
    """A form field, stripped ('' when absent)."""
    return (form.get(name) or "").strip()


def _number(form, name: str, cast, default=None, what: str | None = None):
    """Field `name` as an int or float; errors name the argument `name` (the page shows its CLI flag) or, for
    fields that are no CLI argument, `what`."""
    text = field_text(form, name)
    fields = () if what else (name,)
    what = what or "{" + name + "}"
    if not text:
        if default is None:
            raise CertifyNetError(f"{what} is required", *fields)
        return default
    try:
        value = cast(text)
    except (TypeError, ValueError, OverflowError):
        kind = "an integer" if cast is int else "a number"
        raise CertifyNetError(f"{what} must be {kind}, got '{text[:40]}'", *fields) from None
    if cast is float and math.isnan(value):
        raise CertifyNetError(f"{what} must be a number, got '{text[:40]}'", *fields)
    return value


def _choice(form, name: str, choices, default=None, what: str | None = None) -> str:
    value = field_text(form, name) or default
    if value not in choices:
        fields = () if what else (name,)
        raise CertifyNetError(f"{what or '{' + name + '}'} must be one of {', '.join(choices)}, got "
                              f"'{(value or '')[:40]}'", *fields)
    return value


# The settings are a `SamplingConfig` (with `method`): app.py reads .method/.sigma/.N/.select and
# passes_per_input(), and stores dataclasses.asdict() of it in the job.
Settings = SamplingConfig


def parse_settings(form, dim: int) -> SamplingConfig:
    """The smoothing settings of the form as a `SamplingConfig` in which exactly the options the job's sample.py
    command gives are set, checked by `SamplingConfig.validate` (so the form accepts what the command line
    accepts). Its `method` is certify.py's."""
    d = cli_defaults()
    method = _choice(form, "method", tuple(METHODS), d["method"], what="method")
    v = {"sigma": _number(form, "sigma", float), "k": _number(form, "k", int, d["k"]),
         "N0": _number(form, "N0", int, d["N0"]), "N": _number(form, "N", int, d["N"]),
         "alpha": _number(form, "alpha", float, d["alpha"]), "batch": _number(form, "batch", int, d["batch"]),
         "seed": _number(form, "seed", int, d["seed"]), "select": _choice(form, "select", ("n0", "label"), d["select"])}
    iss, dsrs = method.startswith("iss"), method.endswith("dsrs")
    keep = ["sigma", "N", "alpha", "batch", "seed"] + (["k"] if v["k"] else [])
    keep += ["select"] if v["select"] != "n0" else ([] if iss else ["N0"])  # ISS: the pilot picks the class
    if dsrs:
        keep.append("q_dist")
        v["q_dist"] = _choice(form, "q_dist", Q_DISTS, d["q_dist"])
        if v["q_dist"] == "truncated":
            v["q_percentile"] = field_text(form, "q_percentile") or d["q_percentile"]
            keep.append("q_percentile")
        elif field_text(form, "q_sigma"):
            v["q_sigma"] = _number(form, "q_sigma", float)
            keep.append("q_sigma")
    if iss:
        v.update(iss=_choice(form, "iss", ISS_MODES, d["iss"]),
                 iss_decline=_number(form, "iss_decline", float, d["iss_decline"]),
                 iss_n0=_number(form, "iss_n0", int, min(d["iss_n0"], v["N"])))  # the pilot cannot exceed N
        keep += ["iss", "iss_decline", "iss_n0"]
    settings = SamplingConfig.from_explicit({"method": method, **{k: v[k] for k in keep}})
    dataclasses.replace(settings, model="-").validate("sample")
    check_k(dim, settings.k)
    return settings


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
    label = _number(form, "label", int, what="true label")
    if not 0 <= label < num_classes:
        raise CertifyNetError(f"true label must be a class in [0, {num_classes - 1}] (or empty: unknown), got {label}")
    return label


def parse_input(form, files, model_dataset: str, gallery) -> InputChoice:
    """The input part of the form, checked against the model's dataset and the images present."""
    from certifynet.web.images import convert_drawing, convert_image
    kind = _choice(form, "input_kind", INPUT_KINDS, "gallery", what="input")
    info = dataset_info(model_dataset)
    if kind in ("gallery", "batch"):
        choices = gallery.datasets_for(model_dataset)
        if not choices:
            raise CertifyNetError(f"no {model_dataset} test images under the data folder; upload or draw an image")
        dataset = _choice(form, "dataset", choices, choices[0], what="dataset")
        size = gallery.size(dataset)
        if kind == "gallery":
            if not field_text(form, "idx"):
                raise CertifyNetError("pick a test image from the gallery")
            idx = _number(form, "idx", int, what="gallery image")
            if not 0 <= idx < size:
                raise CertifyNetError(f"gallery image {idx} is not in the {dataset} test set (0 to {size - 1})")
            return InputChoice("gallery", dataset, idx=idx, label=gallery.item(dataset, idx)[1])
        count = _number(form, "count", int, 100, what="number of test images")
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
        invert = _choice(form, "invert", INVERT, "auto", what="invert")
        array, suffix, note = convert_image(data, name[:60], model_dataset, invert)
        return InputChoice("upload", model_dataset, label=label, array=array, suffix=suffix, note=note, filename=name)
    array, suffix, note = convert_drawing(field_text(form, "drawing"), model_dataset)
    return InputChoice("draw", model_dataset, label=label, array=array, suffix=suffix, note=note)


def _stage_configs(model: str, denoiser: str | None, settings: SamplingConfig, choice: InputChoice, job_dir: str,
                   data_dir: str) -> dict:
    """{stage: what it runs}: sample.py's and certify.py --counts's `SamplingConfig` (only the options their
    commands give are set), and for a batch analyze.py's (logs, out); paths relative to the app's root."""
    counts, log = os.path.join(job_dir, "counts.csv"), os.path.join(job_dir, "certify.tsv")
    sample = {"model": model, "dataset": choice.dataset, **({"denoiser": denoiser} if denoiser else {})}
    if choice.kind in ("gallery", "batch"):
        if data_dir != "data":
            sample["data_dir"] = data_dir
        if choice.kind == "gallery":
            sample.update(start=choice.idx, max=1)
        else:
            sample["max"] = choice.count
    else:
        sample["image"] = os.path.join(job_dir, "input" + choice.suffix)
        if choice.label >= 0:
            sample["image_label"] = choice.label
    noise = {k: v for k, v in settings.explicit().items() if k != "method"}
    stages = {"sample": SamplingConfig.from_explicit({**sample, **noise, "out": counts}),
              "certify": SamplingConfig.from_explicit({"counts": counts, "method": settings.method,
                                                       "alpha": settings.alpha, "out": log})}
    if choice.kind == "batch":
        stages["analyze"] = ([log], os.path.join(job_dir, "analysis"))
    return stages


def job_stages(model: str, denoiser: str | None, settings: SamplingConfig, choice: InputChoice, job_dir: str,
               data_dir: str) -> dict:
    """What the job's worker runs, JSON-able: {"sample"/"certify": {"options": the options given}, and for a
    batch "analyze": {"logs": [...], "out": folder}}; `cli_argv` spells the same stages as commands."""
    out = {}
    for stage, what in _stage_configs(model, denoiser, settings, choice, job_dir, data_dir).items():
        out[stage] = {"logs": what[0], "out": what[1]} if stage == "analyze" else {"options": what.explicit()}
    return out


def cli_argv(model: str, denoiser: str | None, settings: SamplingConfig, choice: InputChoice, job_dir: str,
             data_dir: str) -> dict:
    """{stage: argv} for sample.py, certify.py --counts and (batches) analyze.py; paths relative to the root."""
    out = {}
    for stage, what in _stage_configs(model, denoiser, settings, choice, job_dir, data_dir).items():
        out[stage] = [*what[0], "--out", what[1]] if stage == "analyze" else what.to_argv()
    return out


def command_lines(argv: dict) -> str:
    """The job as shell commands, one per stage (run from the app's root folder)."""
    return "\n".join(f"python scripts/{stage}.py {shlex.join(args)}" for stage, args in argv.items())
