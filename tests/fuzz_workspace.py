"""The fuzzer's workspace: real outputs of the real CLIs, and damaged copies of each kind of file they read.

`build_workspace(W)` runs the commands once per session (a tiny untrained LeNet, counts of every kind, a certify
log, a predict log, an attack curve, shards, a training run, a denoiser, an options file) so that many fuzzed
argument vectors reach deep code, then writes under W/bad/ files damaged the ways a user's files get damaged:
truncated or non-JSON sidecars, wrong types, NaN and huge numbers, missing fields, duplicated idx, stripped
digests, torn rows, corrupted checkpoints, options files, images and dataset caches. Damaged counts come twice:
as an edit (the digests no longer match) and "resealed" (digests recomputed, as a forger or a buggy tool
would), so that the checks behind the digests are reached too.

Names say what a file is, so a strategy can prefer the right kind for a flag: bad/counts_*, bad/log_*,
bad/ckpt_*, bad/opt_*, bad/img_*, bad/data_*/, bad/curve_*.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from helpers import untrained_lenet

TINY = ["--N0", "4", "--N", "16", "--batch", "16", "--max", "2", "--no-progress"]
HUGE = 10 ** 30


def _run(module, argv) -> None:
    """Run a CLI main quietly; the workspace is built only from commands that succeed."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = module.main([str(a) for a in argv])
    assert rc == 0, f"building the fuzz workspace: {module.__name__} {argv} -> {rc}: {err.getvalue()[-500:]}"


def build_workspace(w: Path) -> None:
    """The valid files (see the module docstring), then the damaged ones."""
    from certifynet.cli import attack, certify, predict, sample, train, train_denoiser
    m, d = untrained_lenet(w / "model.pth"), w / "data"
    base = ["--model", m, "--sigma", "0.25", "--data-dir", d]
    _run(sample, [*base, *TINY, "--out", w / "c.csv"])
    _run(sample, [*base, *TINY, "--q-dist", "truncated", "--out", w / "c_dsrs.csv"])
    _run(sample, [*base, "--N", "16", "--batch", "16", "--max", "2", "--iss", "absolute", "--iss-n0", "4",
                  "--no-progress", "--out", w / "c_iss.csv"])
    _run(sample, [*base, *TINY, "--dist", "general_gaussian", "--k", "380", "--out", w / "c_k.csv"])
    for i in range(2):
        _run(sample, [*base, *TINY, "--shard", f"{i}/2", "--out", w / "sh.csv"])
    _run(certify, ["--counts", w / "c.csv", "--out", w / "c.np.tsv"])
    _run(certify, ["--counts", w / "c_k.csv", "--out", w / "c_k.np.tsv"])
    _run(predict, [*base, "--N", "16", "--batch", "16", "--max", "2", "--no-progress", "--out", w / "p.tsv"])
    _run(attack, [*base, "--eps", "0", "0.5", "--m", "2", "--steps", "1", "--N", "8", "--batch", "4", "--max", "2",
                  "--no-progress", "--out", w / "curve.tsv"])
    _run(train, ["mnist5k", "lenet", "--noise", "0.25", "--epochs", "1", "--train-subset", "16", "--test-subset", "8",
                 "--batch", "8", "--workers", "0", "--data-dir", d, "--outdir", w / "run", "--no-progress"])
    opt = {"sigma": 0.25, "epochs": 1, "batch": 8, "train_subset": 8, "eval_subset": 8, "eval_batch": 8,
           "arch": "drunet_small"}
    (w / "opt.json").write_text(json.dumps(opt))
    _run(train_denoiser, ["--opt", w / "opt.json", "--data-dir", d, "--outdir", w / "den", "--no-progress"])
    (w / "plain.txt").write_text("my notes\n")
    (w / "folder").mkdir()
    (w / "empty").mkdir()
    os.symlink("loop", w / "loop")                  # a symlink loop
    os.symlink("nowhere/x", w / "dangling")         # a link to nothing
    os.symlink("model.pth", w / "link_model.pth")   # a link to a valid file
    np.save(w / "image.npy", np.full((1, 28, 28), 0.5, np.float32))
    _write_png(w / "image.png", np.full((28, 28), 128, np.uint8))
    bad = w / "bad"
    bad.mkdir()
    damage_counts(w, bad)
    damage_logs(w, bad)
    damage_checkpoints(w, bad)
    damage_options(bad, opt)
    damage_images_and_caches(w, bad)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------- counts files and logs
def _read(path: Path):
    meta = json.loads((Path(f"{path}.meta.json")).read_text())
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    return meta, header, [dict(zip(header, ln.split(","))) for ln in lines[1:]]


def reseal(meta: dict, header: list, rows: list) -> dict:
    """Recompute every digest of an edited counts file (settings, each row's check, the completion record), as a
    forger or a buggy tool would: the file then passes the digests and the checks behind them are reached."""
    from certifynet.records.integrity import CHECK_COLUMN, completion_record, row_check, settings_integrity
    meta = {k: v for k, v in meta.items() if k not in ("integrity", "complete")}
    meta["integrity"] = settings_integrity(meta)
    for r in rows:
        if CHECK_COLUMN in r:
            r[CHECK_COLUMN] = row_check(meta["integrity"]["sha256"], [r[c] for c in header if c != CHECK_COLUMN])
    meta["complete"] = completion_record(meta, [r.get(CHECK_COLUMN, "") for r in rows])
    return meta


def _write(path: Path, meta, header: list, rows: list, text: str | None = None) -> None:
    body = text if text is not None else "\n".join([",".join(header), *(",".join(str(r.get(c, "")) for c in header)
                                                                          for r in rows)]) + "\n"
    path.write_text(body)
    Path(f"{path}.meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta, indent=1))


def _set(key, value):
    return lambda meta, header, rows: ({**meta, key: value}, header, rows)


def _drop(key):
    return lambda meta, header, rows: ({k: v for k, v in meta.items() if k != key}, header, rows)


def _row(field, value, i=0):
    def edit(meta, header, rows):
        rows[i] = {**rows[i], field: value}
        return meta, header, rows
    return edit


def _dup_idx(meta, header, rows):
    return meta, header, [rows[0], {**rows[1], "idx": rows[0]["idx"]}]


def _drop_column(col):
    return lambda meta, header, rows: (meta, [c for c in header if c != col], rows)


def _strip_digests(meta, header, rows):
    return ({k: v for k, v in meta.items() if k not in ("integrity", "complete")},
            [c for c in header if c != "check"], rows)


def _reverse_rows(meta, header, rows):
    return meta, header, rows[::-1]


def _no_rows(meta, header, rows):
    return meta, header, []


COUNTS_EDITS = {
    "sigma_nan": _set("sigma", math.nan), "sigma_str": _set("sigma", "abc"), "sigma_neg": _set("sigma", -0.25),
    "sigma_zero": _set("sigma", -0.0), "sigma_huge": _set("sigma", 1e308), "sigma_inf": _set("sigma", math.inf),
    "N_huge": _set("N", HUGE), "N_float": _set("N", 16.0), "N_str": _set("N", "16"), "N_zero": _set("N", 0),
    "N0_big": _set("N0", 10 ** 6), "N0_neg": _set("N0", -1), "k_big": _set("k", 10 ** 6), "k_float": _set("k", 1.5),
    "k_neg": _set("k", -1), "d_zero": _set("d", 0), "d_huge": _set("d", HUGE), "alpha_nan": _set("alpha", math.nan),
    "alpha_two": _set("alpha", 2), "dist_str": _set("dist", "gaussian"), "dist_other": _set("dist", {"dist": "cauchy"}),
    "kind_log": _set("kind", "certify_log"), "kind_none": _set("kind", None), "columns_str": _set("columns", "idx"),
    "shard_bad": _set("shard", [3, 2]), "shard_str": _set("shard", "0/1"), "q_mode": _set("q_mode", "sideways"),
    "num_classes": _set("num_classes", 0), "seed_neg": _set("seed", -5), "iss_bad": _set("iss", "sometimes"),
    "no_sigma": _drop("sigma"), "no_N": _drop("N"), "no_N0": _drop("N0"), "no_d": _drop("d"), "no_k": _drop("k"),
    "no_dist": _drop("dist"), "no_kind": _drop("kind"), "no_columns": _drop("columns"), "no_alpha": _drop("alpha"),
    "no_num_classes": _drop("num_classes"), "no_complete": _drop("complete"), "no_q_mode": _drop("q_mode"),
    "dup_idx": _dup_idx, "idx_neg": _row("idx", "-3"), "idx_huge": _row("idx", str(HUGE)),
    "idx_float": _row("idx", "1.0"),
    "count_gt_n": _row("count", "17"), "count_neg": _row("count", "-1"), "count_nan": _row("count", "nan"),
    "count_huge": _row("count", "1e308"), "n_zero": _row("n", "0"), "n0_huge": _row("n0", str(HUGE)),
    "pred_abstain": _row("pred", "-1"), "pred_class": _row("pred", "10"), "pred_huge": _row("pred", str(HUGE)),
    "label_neg": _row("label", "-5"), "label_huge": _row("label", str(HUGE)), "time_nan": _row("time", "nan"),
    "time_neg": _row("time", "-inf"), "no_count_col": _drop_column("count"), "reversed": _reverse_rows,
    "no_rows": _no_rows, "digests_stripped": _strip_digests, "unicode": _row("label", "σ"),
}
DSRS_EDITS = {
    "q_count_gt": _row("q_count", "99"), "q_n_zero": _row("q_n", "0"), "q_param_nan": _set("q_param", math.nan),
    "q_param_str": _set("q_param", "x++"), "q_sigma_neg": _set("q_sigma", -1.0), "no_q_dist": _drop("q_dist"),
}


def damage_counts(w: Path, bad: Path) -> None:
    """bad/counts_<edit>.csv (digests left as they were) and bad/counts_<edit>_sealed.csv (digests recomputed)."""
    for src, edits, prefix in ((w / "c.csv", COUNTS_EDITS, "counts_"), (w / "c_dsrs.csv", DSRS_EDITS, "counts_dsrs_")):
        for name, edit in edits.items():
            meta, header, rows = edit(*_read(src))
            _write(bad / f"{prefix}{name}.csv", meta, header, rows)
            meta, header, rows = edit(*_read(src))
            _write(bad / f"{prefix}{name}_sealed.csv", reseal(meta, header, rows), header, rows)
    meta, header, rows = _read(w / "c.csv")
    text = (w / "c.csv").read_text()
    sidecar = (w / "c.csv.meta.json").read_text()
    for name, (body, side) in {
        "truncated_json": (text, sidecar[: len(sidecar) // 2]), "empty_json": (text, ""), "list_json": (text, "[1, 2]"),
        "null_json": (text, "null"), "nan_json": (text, "NaN"), "torn_row": (text[:-4], sidecar),
        "blank_line": (text.replace("\n", "\n\n", 1), sidecar), "crlf": (text.replace("\n", "\r\n"), sidecar),
        "bom": ("\ufeff" + text, sidecar), "header_only": (text.splitlines()[0] + "\n", sidecar),
        "empty": ("", sidecar), "nul_tail": (text + "\0\0\0", sidecar), "binary": (None, sidecar),
        "short_row": (text.rsplit(",", 2)[0] + "\n", sidecar),
    }.items():
        path = bad / f"counts_{name}.csv"
        if body is None:
            path.write_bytes(bytes(range(256)) * 4)
        else:
            path.write_text(body)
        Path(f"{path}.meta.json").write_text(side)
    shutil.copy(w / "c.csv", bad / "counts_no_sidecar.csv")
    shutil.copy(w / "c.csv", bad / "counts_sidecar_is_folder.csv")
    os.mkdir(bad / "counts_sidecar_is_folder.csv.meta.json")


LOG_EDITS = {
    "radius_nan": ("radius", "nan"), "radius_inf": ("radius", "inf"), "radius_neg": ("radius", "-1"),
    "radius_huge": ("radius", "1e308"), "predict_text": ("predict", "x"), "label_empty": ("label", ""),
    "correct_two": ("correct", "2"), "time_nan": ("time", "nan"), "idx_dup": ("idx", None),
    "pA_nan": ("pA_lower", "nan"),
}
LOG_META_EDITS = {"alpha_str": ("alpha", "abc"), "alpha_nan": ("alpha", math.nan), "sigma_nan": ("sigma", math.nan),
                  "kind_audit": ("kind", "attack_audit"), "no_alpha": ("alpha", None), "label_nl": ("label", "a\nb"),
                  "sigma_list": ("sigma", [0.25])}


def damage_logs(w: Path, bad: Path) -> None:
    """bad/log_<edit>.tsv from the certify log c.np.tsv, bad/curve_<edit>.tsv from the attack curve."""
    for src, prefix, edits in ((w / "c.np.tsv", "log_", LOG_EDITS), (w / "curve.tsv", "curve_", {
            "predict_nan": ("predict@0.5", "nan"), "correct_text": ("correct@0", "yes"), "idx_dup": ("idx", None)})):
        lines = src.read_text().splitlines()
        header = lines[0].split("\t")
        meta_text = Path(f"{src}.meta.json").read_text()
        for name, (col, value) in edits.items():
            rows = [ln.split("\t") for ln in lines[1:]]
            if value is None:
                rows[1][header.index(col)] = rows[0][header.index(col)]
            elif col in header:
                rows[0][header.index(col)] = value
            body = "\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]) + "\n"
            (bad / f"{prefix}{name}.tsv").write_text(body)
            (bad / f"{prefix}{name}.tsv.meta.json").write_text(meta_text)
        for name, body in {"torn": lines and "\n".join(lines)[:-3], "header_only": lines[0] + "\n", "empty": "",
                           "no_radius": "\n".join([lines[0].replace("radius", "r"), *lines[1:]]) + "\n",
                           "spaces": "\n".join(ln.replace("\t", " ") for ln in lines) + "\n"}.items():
            (bad / f"{prefix}{name}.tsv").write_text(body)
            (bad / f"{prefix}{name}.tsv.meta.json").write_text(meta_text)
    meta = json.loads(Path(f"{w / 'c.np.tsv'}.meta.json").read_text())
    for name, (key, value) in LOG_META_EDITS.items():
        edited = {k: v for k, v in meta.items() if k != key} if value is None else {**meta, key: value}
        shutil.copy(w / "c.np.tsv", bad / f"log_meta_{name}.tsv")
        (bad / f"log_meta_{name}.tsv.meta.json").write_text(json.dumps(edited))
    shutil.copy(w / "c.np.tsv", bad / "log_meta_truncated.tsv")
    (bad / "log_meta_truncated.tsv.meta.json").write_text(json.dumps(meta)[:40])


# ---------------------------------------------------------------- checkpoints, options, images, caches
CKPT_EDITS = {
    "num_classes_zero": ("num_classes", 0), "num_classes_huge": ("num_classes", HUGE),
    "num_classes_str": ("num_classes", "10"),
    "arch_unknown": ("arch", "transformer9000"), "arch_int": ("arch", 7), "dataset_mars": ("dataset", "mars"),
    "noise_k_float": ("noise", {"sigma": 0.25, "k": 1.5}), "noise_k_str": ("noise", {"sigma": 0.25, "k": "abc"}),
    "noise_sigma_nan": ("noise", {"sigma": math.nan, "k": 0}), "noise_sigma_neg": ("noise", {"sigma": -1.0, "k": 0}),
    "noise_str": ("noise", "gaussian"), "norm_nan": ("normalization", {"mean": [math.nan], "std": [1.0]}),
    "norm_std_zero": ("normalization", {"mean": [0.0], "std": [0.0]}), "norm_list": ("normalization", [0.5]),
    "format_future": ("format", 999), "state_dict_none": ("state_dict", None), "epoch_str": ("epoch", "x"),
}


def damage_checkpoints(w: Path, bad: Path) -> None:
    """bad/ckpt_*.pth: truncated, empty, not a zip, edited metadata, NaN weights, missing/extra weights."""
    raw = (w / "model.pth").read_bytes()
    (bad / "ckpt_truncated.pth").write_bytes(raw[: len(raw) // 2])
    (bad / "ckpt_empty.pth").write_bytes(b"")
    (bad / "ckpt_text.pth").write_text("not a checkpoint\n")
    (bad / "ckpt_pickle.pth").write_bytes(b"\x80\x04not a checkpoint")
    with zipfile.ZipFile(bad / "ckpt_zip_junk.pth", "w") as z:
        z.writestr("archive/data.pkl", b"junk")
    ckpt = torch.load(w / "model.pth", map_location="cpu", weights_only=True)
    for name, (key, value) in CKPT_EDITS.items():
        torch.save({**ckpt, key: value}, bad / f"ckpt_{name}.pth")
    sd = dict(ckpt["state_dict"])
    first = next(iter(sd))
    torch.save({**ckpt, "state_dict": {k: v for k, v in sd.items() if k != first}}, bad / "ckpt_missing_weight.pth")
    torch.save({**ckpt, "state_dict": {**sd, first: torch.zeros(3)}}, bad / "ckpt_wrong_shape.pth")
    torch.save({**ckpt, "state_dict": {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                                       for k, v in sd.items()}}, bad / "ckpt_nan_weights.pth")
    torch.save(sd, bad / "ckpt_bare_state_dict.pth")
    torch.save([1, 2, 3], bad / "ckpt_list.pth")


def damage_options(bad: Path, opt: dict) -> None:
    """bad/opt_*.json: denoiser options files that are not JSON objects or hold wrong values."""
    text = json.dumps(opt)
    edits = {"unknown_key": {"frobnicate": 1}, "epochs_str": {"epochs": "abc"}, "epochs_huge": {"epochs": 1e300},
             "epochs_bool": {"epochs": True}, "sigma_nan": {"sigma": math.nan}, "sigma_neg": {"sigma": -1},
             "sigmas_bad": {"sigma": None, "sigmas": "0.1,abc"}, "lr_inf": {"lr": math.inf}, "batch_zero": {"batch": 0},
             "subset_huge": {"train_subset": HUGE}, "nested": {"lr": {"a": 1}}, "resume_int": {"resume": 3},
             "unicode": {"task": "\u03c3\n\t"}}
    bodies = {"truncated": text[:-5], "list": "[1, 2]", "empty": "", "null": "null",
              **{name: json.dumps({**opt, **edit}) for name, edit in edits.items()}}
    for name, body in bodies.items():
        (bad / f"opt_{name}.json").write_text(body)


def damage_images_and_caches(w: Path, bad: Path) -> None:
    """bad/img_*: images of the wrong shape, range, dtype or format; bad/data_*/mnist5k.npz: broken caches."""
    for name, array in {"2d": np.full((28, 28), 0.5, np.float32), "rgb": np.full((3, 28, 28), 0.5, np.float32),
                        "nan": np.full((1, 28, 28), np.nan, np.float32), "big": np.full((1, 28, 28), 2.0, np.float32),
                        "int": np.full((1, 28, 28), 1, np.int64), "empty": np.zeros((0,), np.float32),
                        "small": np.full((1, 4, 4), 0.5, np.float32),
                        "obj": np.array([{"a": 1}], dtype=object)}.items():
        np.save(bad / f"img_{name}.npy", array, allow_pickle=True)
    _write_png(bad / "img_tiny.png", np.zeros((1, 1), np.uint8))
    _write_png(bad / "img_rgb.png", np.zeros((28, 28, 3), np.uint8))
    (bad / "img_truncated.png").write_bytes((w / "image.png").read_bytes()[:30])
    (bad / "img_text.png").write_text("not an image")
    (bad / "img_huge_header.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, "
                                              b"'shape': (1, 100000, 100000), }" + b" " * 46 + b"\n")
    cache = np.load(w / "data" / "mnist5k.npz")
    arrays = {k: cache[k] for k in cache.files}
    for name, edit in {"shape": lambda a: {"x": np.zeros((10, 10), np.uint8), "y": np.zeros(10, np.int64)},
                       "labels": lambda a: {**a, next(k for k in a if k != "x" and a[k].ndim == 1): None},
                       "missing": lambda a: {k: v for k, v in list(a.items())[:1]}}.items():
        folder = bad / f"data_{name}"
        folder.mkdir()
        edited = {k: (np.full_like(arrays[k], 99) if v is None else v) for k, v in edit(arrays).items()}
        np.savez(folder / "mnist5k.npz", **edited)
    folder = bad / "data_truncated"
    folder.mkdir()
    (folder / "mnist5k.npz").write_bytes((w / "data" / "mnist5k.npz").read_bytes()[:1000])
