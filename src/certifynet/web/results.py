"""A job's results as its pages show them: the rows of every method (also of a running, cancelled, failed or
interrupted job: certified from the counts written so far), the batch summary and curves, the explanation of
a single certificate, and the job's files (each one, a zip of all, reproduce.sh).

Rows come from the certify log when it holds them; otherwise from the rows of the counts file written so far,
certified here with `certify.from_counts.certify_row`, the function certify.py runs on them (so a partial row
equals the row the certify stage will write). Nothing here writes into the job folder.
"""
from __future__ import annotations

import functools
import io
import math
import os
import tempfile
import zipfile
from pathlib import Path

from certifynet.errors import CertifyNetError

HIDDEN_FILES = (".tmp", ".lock")   # never listed: half-written temporaries and writer locks


def count_rows(path: str) -> int:
    """Complete data rows of a RowLog file (lines after the header); 0 when absent."""
    try:
        with open(path, "rb") as f:
            return max(0, f.read().count(b"\n") - 1)
    except OSError:
        return 0


def is_sampling(stage: dict) -> bool:
    opts = stage.get("options") or {}
    return stage["stage"] in ("sample", "attack") or (stage["stage"] == "certify" and not opts.get("counts"))


def stage_rows(root: str, stages: list, index: int, inputs: int) -> int:
    """Inputs done by the sampling stage at or before `index` (rows in its output)."""
    for stage in reversed(stages[:index + 1]):
        if is_sampling(stage):
            return min(inputs, count_rows(os.path.join(root, stage["options"]["out"])))
    return 0


def progress_of(root: str, folder: str, job: dict, queue_position: int = 0) -> dict:
    """Forward passes done of the total (the rows done before a resume included: the worker's `base`; exact for
    fixed N, at most for ISS and sequential, whose finished jobs show what they spent), the stage, inputs done,
    elapsed seconds and ETA."""
    from certifynet.web.jobs import read_json
    prog = read_json(os.path.join(folder, "progress.json"))
    passes = int(prog.get("passes", 0)) + int(prog.get("base", 0))
    inputs, exact = int(job.get("inputs", 1)), bool(job.get("passes_exact", True))
    total = int(job.get("passes_per_input", 0)) * inputs
    if job["state"] == "done" and not exact:
        total = passes
    total = max(total, passes)
    elapsed = eta = None
    if prog.get("first_pass") and prog.get("updated"):
        elapsed = max(0.0, prog["updated"] - prog["first_pass"])
        if job["state"] == "running" and prog.get("passes") and elapsed > 0:
            eta = (total - passes) * elapsed / prog["passes"]
    stages = job.get("stages") or []
    index = min(int(prog.get("index", 0)), max(len(stages) - 1, 0))
    return {"state": job["state"], "stage": prog.get("stage", ""), "stage_index": index + 1 if stages else 0,
            "stages": len(stages), "passes": passes, "total": total, "exact": exact,
            "inputs_done": stage_rows(root, stages, index, inputs), "inputs": inputs,
            "elapsed_s": elapsed, "eta_s": eta, "queue_position": queue_position, "error": job.get("error", "")}


def _stamp(path: str):
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


@functools.lru_cache(maxsize=512)
def _read_log(path: str, stamp) -> tuple:
    from certifynet.records import read_meta, read_rows
    if stamp is None:
        return {}, []
    try:
        _, rows = read_rows(path, allow_torn=True)
        return read_meta(path, required=False), rows
    except CertifyNetError:
        return {}, []


@functools.lru_cache(maxsize=512)
def _read_counts(path: str, stamp) -> tuple:
    """(sidecar, rows) of a counts file, complete rows only (its writer may still be appending), each checked."""
    from certifynet.records import (
        read_meta,
        read_rows,
        validate_counts_meta,
        validate_counts_rows,
    )
    if stamp is None:
        return {}, []
    try:
        meta = read_meta(path)
        validate_counts_meta(meta, f"sidecar '{path}.meta.json'")
        header, rows = read_rows(path, sep=",", allow_torn=True)
        validate_counts_rows(header, rows, meta, path)
        return meta, rows
    except CertifyNetError:
        return {}, []


def read_log(path: str) -> tuple:
    return _read_log(path, _stamp(path))


def read_counts(path: str) -> tuple:
    return _read_counts(path, _stamp(path))


def _as_text(row: dict) -> dict:
    return {k: (str(v) if not isinstance(v, str) else v) for k, v in row.items()}


def run_rows(root: str, run: dict, alpha: float) -> dict:
    """{rows, meta, partial, counts_meta, counts_rows} of one method's run; rows as a certify log's (strings)."""
    meta, rows = read_log(os.path.join(root, run["log"]))
    out = {"rows": rows, "meta": meta, "partial": False, "counts_meta": {}, "counts_rows": {}}
    if run.get("counts"):
        from certifynet.certify.from_counts import certify_row
        cmeta, crows = read_counts(os.path.join(root, run["counts"]))
        out.update(counts_meta=cmeta, counts_rows={int(r["idx"]): r for r in crows})
        if len(crows) > len(rows) and cmeta:
            certified = []
            for r in crows:
                row = certify_row(r, cmeta, run["method"], alpha)
                row["time"] = float(r.get("time") or 0)
                certified.append(_as_text(row))
            out.update(rows=certified, meta={**cmeta, "method": run["method"], "alpha": alpha}, partial=True)
    return out


def job_alpha(job: dict) -> float:
    """α of the job's certificates (its settings: today's values, or the first version's SamplingConfig)."""
    return float((job.get("settings") or {}).get("alpha") or 0.001)


def job_results(root: str, job: dict) -> list:
    """One entry per run of the job: its method, title, rows (partial or not), sidecars, and `shared` when its
    counts file serves another method too (its rows then count every forward pass of that file)."""
    alpha = job_alpha(job)
    runs = job.get("runs", [])
    counts = [r.get("counts") for r in runs]
    return [{**run, **run_rows(root, run, alpha), "shared": bool(run.get("counts")) and counts.count(run["counts"]) > 1}
            for run in runs]


def explained(results: list, alpha: float) -> list:
    """For a single input: each run's first row with its explanation (`explain.explain`) and, when R is at the
    cap that N allows, the flag's words (`cap_text`)."""
    from certifynet.web.explain import cap_words, explain
    out = []
    for res in results:
        if not res["rows"]:
            continue
        row = res["rows"][0]
        counts_row = res["counts_rows"].get(int(float(row["idx"])))
        meta = res["meta"] or res["counts_meta"]
        info = explain(row, res["method"], meta, alpha, counts_row, res["counts_meta"] or None)
        cap = cap_words(info, int(float(row.get("n") or 0)), res["method"], int(meta.get("k") or 0)) \
            if info["at_cap"] else ""
        out.append({**res, "row": row, "info": info, "cap_text": cap})
    return out


# ------------------------------------------------------------------------------------------ batch summaries
def as_logs(results: list, labels=None) -> list:
    """`analysis.CertifyLog`s of the runs' rows (partial ones included), for summaries and curves."""
    import pandas as pd

    from certifynet.analysis import CertifyLog
    logs = []
    for i, res in enumerate(results):
        if not res["rows"]:
            continue
        data = pd.DataFrame(res["rows"])
        for col in data.columns:
            if col not in ("decisions", "method"):
                data[col] = pd.to_numeric(data[col], errors="coerce")
        label = labels[i] if labels else res.get("title") or res["method"]
        logs.append(CertifyLog(path=Path(res["log"]), data=data, meta=dict(res["meta"]), label=label))
    return logs


def summary_table(logs: list, radii=None) -> dict | None:
    """analyze.py's table of the logs, columns shown to the digits its tables use."""
    from certifynet.analysis import DEFAULT_RADII, METRICS, summarize
    if not logs:
        return None
    df = summarize(logs, radii or DEFAULT_RADII)
    shown = ("m", "ACR", "abstain", "samples/input", "sec/input")
    keep = [c for c in df.columns if c.startswith("r=") or c in shown]
    digits = [3 if c.startswith("r=") else METRICS[c][0] for c in keep]
    labels = [log.label for log in logs]
    return {"columns": ["run", *keep], "values": [[label, *[_fmt(v, n) for v, n in zip(row, digits)]]
                                                  for label, row in zip(labels, df[keep].to_numpy())]}


def _fmt(v, digits: int) -> str:
    try:
        return "–" if math.isnan(float(v)) else f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return "–"


def curves_png(logs: list, title: str | None = None) -> bytes:
    """The certified-accuracy curves of the logs overlaid (analysis.plot_certified_accuracy), as PNG bytes."""
    from certifynet.analysis import plot_certified_accuracy
    with tempfile.TemporaryDirectory(prefix="certifynet-plot-") as tmp:
        plot_certified_accuracy(logs, Path(tmp) / "curves", title=title)
        return (Path(tmp) / "curves.png").read_bytes()


# ------------------------------------------------------------------------------------------ files
def job_files(folder: str) -> list:
    """Every file of the job folder (relative names, sorted), but temporaries and locks."""
    out = []
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.endswith(HIDDEN_FILES) and not name.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, name), folder))
    return sorted(out)


def safe_file(folder: str, name: str) -> str | None:
    """The absolute path of `name` if it is one of the job's files (no way out of the folder), else None."""
    if name not in job_files(folder):
        return None
    path = os.path.realpath(os.path.join(folder, name))
    return path if path.startswith(os.path.realpath(folder) + os.sep) and os.path.isfile(path) else None


def zip_bytes(folder: str, job_id: str, extra: dict) -> bytes:
    """A zip of every job file under `<job id>/`, plus `extra` {name: text} (reproduce.sh)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in job_files(folder):
            z.write(os.path.join(folder, name), f"{job_id}/{name}")
        for name, text in extra.items():
            z.writestr(f"{job_id}/{name}", text)
    return buf.getvalue()


def partial_log(result: dict) -> str:
    """A run's rows as a tab-separated certify log (the partial download of a stopped job)."""
    from certifynet.sampling.certify_stage import log_columns
    columns = log_columns(result["method"]) if result["method"] != "sequential" else list(result["rows"][0])
    lines = ["\t".join(columns)] + ["\t".join(str(r.get(c, "")) for c in columns) for r in result["rows"]]
    return "\n".join(lines) + "\n"


def run_summary(result: dict, batch: bool) -> str:
    """One short cell for the jobs list: the radius of one input, or clean and certified accuracy of a batch."""
    rows = result["rows"]
    if not rows:
        return ""
    if not batch:
        r = rows[0]
        return "abstain" if r["predict"] == "-1" else f"R = {float(r['radius']):.3f}"
    from certifynet.analysis import certified_accuracy
    clean, at_half = certified_accuracy([float(r["radius"]) for r in rows], [int(float(r["correct"])) for r in rows],
                                        [0.0, 0.5])
    return f"acc {clean:.2f} · @0.5 {at_half:.2f}" + (" (partial)" if result["partial"] else "")


# ------------------------------------------------------------------------------------------ the JSON API
def _typed(row: dict) -> dict:
    """A log row with its numbers as JSON numbers (text columns such as `decisions` stay text)."""
    out = {}
    for k, v in row.items():
        try:
            f = float(v)
            out[k] = int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
        except (TypeError, ValueError):
            out[k] = v
    return out


def api_job(st, job: dict, rows: bool = True, explain: bool = False) -> dict:
    """A job as the API (and the quick answer) gives it: its state, progress and, with `rows`, every run's
    rows; with `explain`, for one input, each run's answer in words (`explain.explain`)."""
    out = {k: job.get(k) for k in ("id", "title", "state", "created", "started", "ended", "methods", "lane",
                                   "error", "inputs")}
    out["progress"] = st.jobs.progress(job)
    if not rows:
        return out
    results = job_results(st.root, job)
    out["runs"] = [{"method": r["method"], "title": r["title"], "partial": r["partial"],
                    "rows": [_typed(x) for x in r["rows"]]} for r in results]
    if explain and (job.get("input") or {}).get("kind") != "batch":
        for run, res in zip(out["runs"], explained(results, job_alpha(job))):
            info = res["info"]
            run["answer"] = {"sentence": info["sentence"], "mismatch": info["mismatch"],
                             "cap": res["cap_text"] or None}
    return out


# ------------------------------------------------------------------------------------------ attack jobs
def attack_result(root: str, job: dict) -> dict | None:
    """An attack job's result: the audit's summary and rows, or the curve beside the certified accuracy."""
    from certifynet.web.jobs import read_json
    out = job.get("attack_out")
    if not out:
        return None
    _, rows = read_log(os.path.join(root, out))
    result = {"kind": job.get("kind"), "rows": rows, "summary": read_json(os.path.join(root, out) + ".summary.json")}
    if job.get("kind") == "curve" and rows:
        result["versus"] = _versus(root, job)
    return result


def _versus(root: str, job: dict) -> list:
    """[(run title, [(ε, empirical, certified)])] on the inputs the curve and each certify log share."""
    from certifynet.analysis import certified_vs_empirical
    from certifynet.analysis import read_log as read_certify_log
    analyze = next((s for s in job["stages"] if s["stage"] == "analyze"), None)
    out = []
    for path, label in zip(analyze["logs"], analyze["labels"]) if analyze else ():
        try:
            log = read_certify_log(os.path.join(root, path), label)
            table = certified_vs_empirical(log, os.path.join(root, job["attack_out"]))
        except CertifyNetError:
            continue
        out.append((label, [(float(r.eps), float(r.empirical), float(r.certified)) for r in table.itertuples()]))
    return out

