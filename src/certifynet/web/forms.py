"""The certify form: parse and check every field into the group's settings (the CLI's defaults and checks, one
`SamplingConfig` per stage, see `plan`) and the input (a gallery image, an upload, a drawing or a batch).

A bad value raises CertifyNetError with one line, before any file exists. The JSON API (`views.api`) reads
the same fields through the same functions, from a form or a JSON object.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from certifynet.data import dataset_info
from certifynet.errors import CertifyNetError
from certifynet.noise import check_k
from certifynet.sampling.config import SamplingConfig
from certifynet.web.plan import GroupSettings, Source, check_group, check_methods

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
    out.update(sigma=0.25, method=d.method, q_dist="truncated", iss="absolute", q_sigma="", radii=[0.25, 0.5])
    return out


def field_text(form, name: str) -> str:
    """A form field, stripped ('' when absent); a JSON number is read as its text."""
    value = form.get(name)
    return "" if value is None else str(value).strip()


def parse_number(form, name: str, cast, default=None, what: str | None = None):
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


def field_list(form, name: str) -> list:
    """All values of a repeated field (checkboxes), stripped, empties dropped; a JSON list works too."""
    values = form.getlist(name) if hasattr(form, "getlist") else form.get(name) or []
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    return [str(v).strip() for v in values if str(v).strip()]


def parse_radii(form) -> list:
    """Sequential's radii: numbers separated by spaces or commas."""
    from certifynet.certify.sequential import check_radii
    text = field_text(form, "radii") or " ".join(map(str, cli_defaults()["radii"]))
    try:
        radii = [float(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise CertifyNetError(f"{{radii}} must be numbers separated by spaces, got '{text[:40]}'", "radii") from None
    return check_radii(radii)


def parse_settings(form, dim: int) -> GroupSettings:
    """The smoothing settings of the form for its methods (several at once: a group on shared counts), each
    stage's options checked as its command checks them (`plan.check_group`), so the form accepts what the
    command line accepts. The `method` field (one method) is accepted as well as `methods`."""
    d = cli_defaults()
    methods = check_methods(field_list(form, "methods") or [field_text(form, "method") or "np"])
    v = {"sigma": parse_number(form, "sigma", float), "k": parse_number(form, "k", int, d["k"]),
         "N": parse_number(form, "N", int, d["N"]), "alpha": parse_number(form, "alpha", float, d["alpha"]),
         "batch": parse_number(form, "batch", int, d["batch"]), "seed": parse_number(form, "seed", int, d["seed"]),
         "select": _choice(form, "select", ("n0", "label"), d["select"])}
    if any(not m.startswith("iss") for m in methods):
        v["N0"] = parse_number(form, "N0", int, d["N0"])
    if any(m.endswith("dsrs") for m in methods):
        v["q_dist"] = _choice(form, "q_dist", Q_DISTS, d["q_dist"])
        if v["q_dist"] == "truncated":
            v["q_percentile"] = field_text(form, "q_percentile") or d["q_percentile"]
        elif field_text(form, "q_sigma"):
            v["q_sigma"] = parse_number(form, "q_sigma", float)
    if any(m.startswith("iss") for m in methods):
        v.update(iss=_choice(form, "iss", ISS_MODES, d["iss"]),
                 iss_decline=parse_number(form, "iss_decline", float, d["iss_decline"]),
                 iss_n0=parse_number(form, "iss_n0", int, iss_pilot_default(v["N"])))
    if "sequential" in methods:
        v["radii"] = parse_radii(form)
    settings = GroupSettings(methods, v)
    check_group(settings)
    check_k(dim, settings.values["k"])
    return settings


def iss_pilot_default(n: int) -> int:
    """The ISS pilot when the form leaves it empty: the CLI's default, but never more than N."""
    return min(cli_defaults()["iss_n0"], n)


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
    label = parse_number(form, "label", int, what="true label")
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
            idx = parse_number(form, "idx", int, what="gallery image")
            if not 0 <= idx < size:
                raise CertifyNetError(f"gallery image {idx} is not in the {dataset} test set (0 to {size - 1})")
            return InputChoice("gallery", dataset, idx=idx, label=gallery.item(dataset, idx)[1])
        count = parse_number(form, "count", int, 100, what="number of test images")
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


def input_source(model, denoiser, choice: InputChoice, job_dir: str, data_dir: str) -> Source:
    """sample.py's input options for the choice: a dataset selection, or the job's stored image file."""
    opts = {}
    if choice.kind in ("gallery", "batch"):
        if data_dir != "data":
            opts["data_dir"] = data_dir
        opts.update({"start": choice.idx, "max": 1} if choice.kind == "gallery" else {"max": choice.count})
    else:
        opts["image"] = os.path.join(job_dir, "input" + choice.suffix)
        if choice.label >= 0:
            opts["image_label"] = choice.label
    return Source(model.path, choice.dataset, denoiser.path if denoiser else None,
                  arch=model.arch if getattr(model, "arch_given", False) else None, options=opts)
