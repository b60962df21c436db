"""The web app's jobs: groups of methods on shared counts, results explained, partial results of stopped jobs,
restarts, the commands, the files, the quick answer, the attack and the JSON API. Jobs run in the test's own
process (`JobManager.run_inline`: the worker's `run_job`, no subprocess) unless a test is about the processes."""
import importlib
import io
import json
import math
import os
import re
import shlex
import shutil

import pytest
import torch
from scipy.stats import norm

from certifynet.cli import certify as certify_cli
from certifynet.errors import CertifyNetError
from certifynet.records import read_rows

flask = pytest.importorskip("flask")

from webtools import (  # noqa: E402,F401
    DATA,
    GALLERY,
    TINY,
    app_root_fixture,
    ckpt_fixture,
    client_fixture,
    files_under,
    form_error,
    jobs_of,
    make_app,
    run,
    submit,
    wait,
)


def _cli_rows(argv, out):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the job's worker: the same arithmetic
    try:
        assert certify_cli.main([*argv, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return read_rows(str(out))[1]


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


# ------------------------------------------------------------------------------------------------ groups
def test_one_digit_group_on_shared_counts_equals_the_cli(client, app_root, tmp_path, monkeypatch):
    """NP, DSRS, ISS-NP and sequential on one digit, as one group: NP is certified from the DSRS counts and equals
    certify.py's NP run; DSRS and sequential equal theirs; the page shows them side by side, explained."""
    jid = submit(client, methods=["np", "dsrs", "iss-np", "sequential"], idx="2", N="200", iss_n0="50",
                 radii="0.25 0.5")
    job = run(client, jid)
    assert job["state"] == "done", job
    folder = app_root / "results" / "web" / jid
    assert {"counts.csv", "counts-iss.csv", "np.tsv", "dsrs.tsv", "iss-np.tsv", "sequential.tsv"} <= set(
        os.listdir(folder))
    monkeypatch.chdir(app_root)
    common = ["--model", "models/lenet.pth", "--data-dir", DATA, "--start", "2", "--max", "1", "--sigma", "0.25",
              "--N0", "10", "--N", "200", "--batch", "100"]
    web = {m: read_rows(str(folder / f"{m}.tsv"))[1] for m in ("np", "dsrs", "sequential")}
    alone = _cli_rows(common, tmp_path / "np.tsv")   # NP alone: the same draws of P; the group's row also counts Q's
    assert [{**r, "samples": "-"} for r in _strip(web["np"])] == [{**r, "samples": "-"} for r in _strip(alone)]
    assert int(web["np"][0]["samples"]) == int(alone[0]["samples"]) + 200
    assert _strip(web["dsrs"]) == _strip(_cli_rows([*common, "--method", "dsrs", "--q-dist", "truncated"],
                                                   tmp_path / "dsrs.tsv"))
    assert _strip(web["sequential"]) == _strip(_cli_rows([*common, "--sequential", "--radii", "0.25", "0.5"],
                                                         tmp_path / "seq.tsv"))
    html = client.get(f"/jobs/{jid}").get_data(as_text=True)
    assert html.index('id="result"') < html.index('id="cli-command"')             # the result above the commands
    assert re.findall(r'class="run-row" data-method="([\w-]+)"', html) == ["np", "dsrs", "iss-np", "sequential"]
    for m in ("np", "dsrs", "sequential"):
        assert f'data-value="{web[m][0]["radius"]}"' in html
    assert "With probability at least 1 − α = 99.9%" in html and 'id="selection"' in html
    selection = json.load(open(folder / "selection.json"))
    assert sum(selection["counts.csv"]["2"]) == 10 and sum(selection["counts-iss.csv"]["2"]) == 50


def test_a_radius_at_the_cap_of_n_is_flagged_with_the_n_of_the_next_step(client):
    """For a digit whose N draws all hit, R = σΦ⁻¹(α^{1/N}): flagged, with the smallest N whose all-hit
    certificate reaches the next step of 0.25 (computed here from the formula)."""
    job = run(client, submit(client, method="np", idx="3"))
    html = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    radius = float(re.search(r'class="num radius" data-value="([^"]+)"', html).group(1))
    cap = 0.25 * norm.ppf(0.001 ** (1 / 100))
    assert radius == pytest.approx(cap, abs=1e-9)
    step = (math.floor(radius / 0.25) + 1) * 0.25
    n = math.ceil(math.log(0.001) / math.log(norm.cdf(step / 0.25)))
    assert "R is at the cap that N allows" in html and f"r = {step:g}, needs N ≥ {n:,}" in html
    assert "at the N cap" in html


def test_certified_but_wrong_is_said_so(client, app_root):
    """An image given with a true label the smoothed classifier does not predict: certified ≠ correct."""
    from webtools import digit, png_bytes
    job = run(client, submit(client, method="np", input_kind="upload", label="0",
                             image=(io.BytesIO(png_bytes(digit(3))), "four.png")))   # test digit 3 is a 4
    html = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert "Certified ≠ correct: g is certified to return class 4" in html and "the true label is 0" in html


# ------------------------------------------------------------------------------------------------ defects
def test_commands_keep_stage_order_after_a_restart(app_root):
    """Defect 1: job.json was saved with sort_keys and the commands built by iterating it, so after a restart the
    commands came alphabetically (analyze, certify, sample). Now the stages are a list, in run order."""
    app = make_app(app_root)
    jid = submit(app.test_client(), method="np", input_kind="batch", count="2")
    jobs_of(app).shutdown()
    again = make_app(app_root)
    html = again.test_client().get(f"/jobs/{jid}").get_data(as_text=True)
    lines = re.search(r'<pre id="cli-command">(.*?)</pre>', html, re.S).group(1).splitlines()
    assert [ln.split()[0] for ln in lines] == ["cd", "certifynet-sample", "certifynet-certify", "certifynet-analyze"]
    jobs_of(again).shutdown()


def test_one_server_per_results_folder(app_root, capsys):
    """Defect 2: a second server on the same results folder killed the first one's running job. Now it is refused,
    in one line naming the first one's pid and port, before it touches any job."""
    from certifynet.cli import web as web_cli
    first = make_app(app_root)
    jobs_of(first).lock.note(port=8123)
    with pytest.raises(CertifyNetError, match=rf"another Certify-Net web server \(pid {os.getpid()}, port 8123\)"):
        make_app(app_root)
    threads = torch.get_num_threads()
    try:
        assert web_cli.main(["--root", str(app_root), "--port", "0", "--data-dir", DATA]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: another Certify-Net web server") and "port 8123" in err[0]
    assert "--results" in err[0]
    jobs_of(first).shutdown()
    jobs_of(make_app(app_root)).shutdown()      # released: the next one starts


def _interrupt_after(monkeypatch, passes):
    """Make the in-process worker stop (as if killed) once it has done more than `passes` forward passes."""
    from certifynet.web import worker
    add = worker.ProgressFile.add

    def stopping(self, n):
        add(self, n)
        if self.passes > passes:
            raise KeyboardInterrupt
    monkeypatch.setattr(worker.ProgressFile, "add", stopping)


def test_progress_counts_the_passes_done_before_a_resume(client, monkeypatch):
    """Defect 3: after a resume, progress restarted at 0 while the total counted every input (a finished job
    showed 31,500 of 42,000). Now the rows already done count: a finished job shows its total of its total."""
    jid = submit(client, method="np", input_kind="batch", count="3")       # 110 forward passes per digit
    with monkeypatch.context() as m:
        _interrupt_after(m, 220)     # stops in the third digit: two rows are written
        with pytest.raises(KeyboardInterrupt):
            run(client, jid)
    jobs = jobs_of(client)
    jobs._finish(jid, -15)
    assert jobs.get(jid)["state"] == "interrupted"
    jobs.resume(jid)
    job = run(client, jid)
    p = jobs.progress(job)
    assert job["state"] == "done" and p["passes"] == p["total"] == 3 * 110 and p["inputs_done"] == 3
    assert client.get(f"/jobs/{jid}/status").get_json()["passes"] == 330


def test_acr_is_described_as_it_is_computed(client):
    """Defect 4: the page said ACR is the "mean certified radius of the correct ones" but showed the mean over
    all inputs of R·correct. Now the words match the number."""
    job = run(client, submit(client, method="np", input_kind="batch", count="4"))
    html = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    note = re.search(r'<p class="hint" id="acr-note">(.*?)</p>', html, re.S).group(1)
    assert "of the correct ones" not in html and "the mean over all m inputs of R·[correct]" in " ".join(note.split())
    rows = read_rows(str(jobs_of(client).job_dir(job["id"])) + "/np.tsv")[1]
    acr = sum(float(r["radius"]) * int(r["correct"]) for r in rows) / len(rows)
    table = re.search(r'<table id="summary-table">(.*?)</table>', html, re.S).group(1)
    header = re.findall(r"<th>(.*?)</th>", table)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table)
    assert float(cells[header.index("ACR")]) == pytest.approx(acr, abs=1e-3)


def test_a_stopped_batch_shows_its_partial_rows_and_downloads(client, app_root, tmp_path, monkeypatch):
    """Defect 5: a cancelled, interrupted or failed batch showed no rows and no downloads although counts.csv held
    the finished inputs. Now they are certified from the partial counts, as certify.py --counts would."""
    jid = submit(client, method="np", input_kind="batch", count="5")
    with monkeypatch.context() as m:
        _interrupt_after(m, 220)
        with pytest.raises(KeyboardInterrupt):
            run(client, jid)
    jobs_of(client)._cancelled.add(jid)
    jobs_of(client)._finish(jid, -15)
    assert jobs_of(client).get(jid)["state"] == "cancelled"
    html = client.get(f"/jobs/{jid}").get_data(as_text=True)
    assert 'id="partial-badge"' in html and html.count('<tr><td><img src="/thumb/mnist5k/') == 2
    assert 'id="accuracy-plot"' in html and client.get(f"/jobs/{jid}/curves.png").mimetype == "image/png"
    partial = client.get(f"/jobs/{jid}/rows/np.tsv").get_data(as_text=True)
    counts = str(app_root / "results" / "web" / jid / "counts.csv")
    cli = _cli_rows(["--counts", counts, "--method", "np"], tmp_path / "partial.tsv")
    web = [dict(zip(partial.splitlines()[0].split("\t"), ln.split("\t"))) for ln in partial.splitlines()[1:]]
    assert len(web) == 2 and _strip(web) == _strip(cli)
    for name in ("counts.csv", "counts.csv.meta.json", "job.json", "progress.json"):
        assert client.get(f"/jobs/{jid}/files/{name}").status_code == 200, name


def test_commands_are_console_scripts_that_reproduce_the_job(client, app_root, tmp_path, monkeypatch):
    """Defect 6: the commands were `python scripts/….py`, which fail under certifynet-web or another --root. Now
    they are the certifynet-* console commands after `cd ROOT`, and run as shown they give the job's rows."""
    job = run(client, submit(client, method="dsrs", input_kind="batch", count="2"))
    html = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    text = re.search(r'<pre id="cli-command">(.*?)</pre>', html, re.S).group(1).replace("&#39;", "'")
    assert text.splitlines()[0] == f"cd {shlex.quote(str(app_root))}" and "scripts/" not in text
    setup = open(os.path.join(os.path.dirname(__file__), "..", "setup.py")).read()
    script = client.get(f"/jobs/{job['id']}/reproduce.sh").get_data(as_text=True)
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script and text in script
    monkeypatch.chdir(app_root)
    torch.set_num_threads(1)
    for line in text.splitlines()[1:]:
        command, *argv = shlex.split(line)
        stage = command[len("certifynet-"):]
        assert f'"{stage}"' in setup                                    # a console script setup.py installs
        argv = [str(tmp_path / os.path.basename(a)) if i and argv[i - 1] in ("--out", "--counts") else a
                for i, a in enumerate(argv)]
        argv = [str(tmp_path / os.path.basename(a)) if a.endswith(".tsv") and a.startswith("results/") else a
                for a in argv]
        assert importlib.import_module(f"certifynet.cli.{stage}").main(argv) == 0
    assert _strip(read_rows(str(tmp_path / "dsrs.tsv"))[1]) == \
        _strip(read_rows(str(app_root / "results" / "web" / job["id"] / "dsrs.tsv"))[1])


def test_no_dead_ends(client, app_root):
    """Defect 7: a failed job pointed to worker.log, which could not be downloaded; a refused resume was shown in
    the green success style. (The --arch field: test_web_forms.)"""
    shutil.copy(app_root / "models" / "lenet.pth", app_root / "models" / "gone.pth")
    jid = submit(client, model="models/gone.pth", method="np")
    os.unlink(app_root / "models" / "gone.pth")
    job = run(client, jid)
    assert job["state"] == "failed" and job["error"] == "checkpoint 'models/gone.pth' not found", job
    (app_root / "results" / "web" / jid / "worker.log").write_text("error: checkpoint 'models/gone.pth' not found\n")
    html = client.get(f"/jobs/{jid}").get_data(as_text=True)
    assert f'href="/jobs/{jid}/files/worker.log" id="worker-log"' in html
    assert client.get(f"/jobs/{jid}/files/worker.log").get_data(as_text=True).startswith("error: checkpoint")
    done = run(client, submit(client, method="np"))
    r = client.post(f"/jobs/{done['id']}/resume")
    assert r.status_code == 409 and form_error(r) == "only an interrupted, cancelled or failed job can be resumed"
    assert 'class="message"' not in r.get_data(as_text=True)


def test_every_file_a_zip_and_the_reports_images(client, app_root):
    """Defect 11: cost.png and the downloaded report.md's images could not be downloaded. Now every file of the
    job's folder can, report.md's relative images resolve, and the zip holds them all; nothing outside."""
    import zipfile
    jid = run(client, submit(client, method="np", input_kind="batch", count="3"))["id"]
    report = client.get(f"/jobs/{jid}/files/analysis/report.md").get_data(as_text=True)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "cost.png" in images
    for name in images:
        r = client.get(f"/jobs/{jid}/files/analysis/{name}")
        assert r.status_code == 200 and r.mimetype == "image/png", name
    z = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{jid}/files.zip").data))
    names = set(z.namelist())
    assert {f"{jid}/np.tsv", f"{jid}/analysis/cost.png", f"{jid}/reproduce.sh", f"{jid}/job.json"} <= names
    for bad in ("../job.json", "..%2F..%2Fmodels%2Flenet.pth", "%2Fetc%2Fpasswd", "analysis/../../x"):
        assert client.get(f"/jobs/{jid}/files/{bad}", follow_redirects=True).status_code == 404, bad


def test_jobs_can_be_deleted_but_not_while_they_run(client, app_root):
    jid = submit(client, method="np")
    r = client.post(f"/jobs/{jid}/delete")
    assert r.status_code == 409 and "cancel the job before deleting it" in form_error(r)
    run(client, jid)
    assert client.post(f"/jobs/{jid}/delete").status_code == 303
    assert not (app_root / "results" / "web" / jid).exists() and client.get(f"/jobs/{jid}").status_code == 404


# ------------------------------------------------------------------------------------------------ lists, compare
def test_jobs_list_compare_and_the_api(client):
    """The jobs list shows each job's radius or accuracy with a box to tick; Compare shows the ticked jobs side
    by side (one image) or as overlaid curves and one table (batches); the API gives the same jobs."""
    a = run(client, submit(client, method="np", idx="5"))["id"]
    b = run(client, submit(client, method="dsrs", idx="5"))["id"]
    batch = run(client, submit(client, methods=["np", "sequential"], input_kind="batch", count="3", radii="0.25"))
    html = client.get("/jobs").get_data(as_text=True)
    assert f'name="jobs" value="{a}"' in html and "R = " in html and "acc " in html
    page = client.get(f"/compare?jobs={a}&jobs={b}").get_data(as_text=True)
    assert re.findall(r'class="run-row" data-method="([\w-]+)"', page) == ["np", "dsrs"] and a in page and b in page
    page = client.get(f"/compare?jobs={batch['id']}").get_data(as_text=True)
    assert 'id="summary-table"' in page and "Sequential" in page
    assert client.get(f"/compare/curves.png?jobs={batch['id']}").mimetype == "image/png"
    assert client.get(f"/compare?jobs={a}&jobs={batch['id']}").status_code == 400
    listed = client.get("/api/jobs").get_json()["jobs"]
    assert [j["id"] for j in listed] == sorted([a, b, batch["id"]], reverse=True)
    one = client.get(f"/api/jobs/{batch['id']}").get_json()
    assert one["state"] == "done" and [r["method"] for r in one["runs"]] == ["np", "sequential"]
    assert len(one["runs"][0]["rows"]) == 3 and isinstance(one["runs"][0]["rows"][0]["radius"], float)
    assert one["progress"]["passes"] == one["progress"]["total"]


def test_api_creates_jobs_with_the_forms_checks(client):
    r = client.post("/api/jobs", json={**GALLERY, **TINY, "methods": ["np", "dsrs"]})
    assert r.status_code == 201 and r.get_json()["state"] == "queued" and r.headers["Location"].startswith("/api/jobs/")
    job = jobs_of(client).get(r.get_json()["id"])
    assert job["methods"] == ["np", "dsrs"] and job["stages"][0]["options"]["N"] == 100
    r = client.post("/api/jobs", data={**GALLERY, **TINY, "alpha": "2"})
    assert r.status_code == 400 and r.get_json() == {"error": "--alpha must be in (0, 1), got 2.0"}
    r = client.post("/api/jobs", json={**GALLERY, **TINY, "N": 100, "idx": 99999})
    assert r.status_code == 400 and "gallery image 99999" in r.get_json()["error"]
    assert client.get("/api/jobs/20260101-000000-abcdef").get_json() == {
        "error": "404 Not Found: The requested URL was not found on the server. If you entered the URL manually please "
                 "check your spelling and try again."}


# ------------------------------------------------------------------------------------------------ the attack
def test_audit_and_empirical_curve_from_a_finished_job(client, app_root):
    done = run(client, submit(client, methods=["np"], input_kind="batch", count="3"))
    r = client.post(f"/jobs/{done['id']}/attack", data={"mode": "audit", "method": "np", "m": "2", "steps": "2",
                                                         "N": "100"})
    audit = run(client, r.headers["Location"].rsplit("/", 1)[1])
    assert audit["state"] == "done", audit
    html = client.get(f"/jobs/{audit['id']}").get_data(as_text=True)
    assert 'id="audit-verdict"' in html and "certified input" in html and "certifynet-attack" in html
    summary = json.load(open(app_root / "results" / "web" / audit["id"] / "np.audit.tsv.summary.json"))
    assert summary["attacked"] == sum(float(r["radius"]) > 0 for r in read_rows(
        str(app_root / "results" / "web" / done["id"] / "np.tsv"))[1])
    r = client.post(f"/jobs/{done['id']}/attack", data={"mode": "curve", "eps": "0 0.5", "m": "2", "steps": "2",
                                                         "N": "100"})
    curve = run(client, r.headers["Location"].rsplit("/", 1)[1])
    assert curve["state"] == "done", curve
    html = client.get(f"/jobs/{curve['id']}").get_data(as_text=True)
    assert 'id="versus-plot"' in html and "certified at r = ε" in html
    assert "--empirical" in html and client.get(f"/jobs/{curve['id']}/files/analysis/certified_vs_empirical.png"
                                                ).mimetype == "image/png"


# ------------------------------------------------------------------------------------------------ processes
def test_quick_answer_on_a_warm_worker_is_the_clis(app_root, tmp_path, monkeypatch):
    """A quick sequential question runs on the model's warm worker (one process, kept loaded: the second answer
    comes from the same pid) and answers what certify.py --sequential answers."""
    app = make_app(app_root, start_jobs=True)
    c = app.test_client()
    try:
        ask = {**GALLERY, "sigma": "0.25", "methods": "sequential", "radii": "0.5"}
        first = c.post("/certify/quick", data=ask).get_json()
        second = c.post("/certify/quick", data=ask).get_json()
        assert first["state"] == second["state"] == "done", first
        pids = [json.load(open(app_root / "results" / "web" / j["id"] / "progress.json"))["pid"]
                for j in (first, second)]
        assert pids[0] == pids[1] != os.getpid()
        row = second["runs"][0]["rows"][0]
        assert "0.5:" in row["decisions"] and second["runs"][0]["answer"]["sentence"] and second["seconds"] > 0
        monkeypatch.chdir(app_root)
        cli = _cli_rows(["--model", "models/lenet.pth", "--data-dir", DATA, "--start", "3", "--max", "1", "--sigma",
                         "0.25", "--sequential", "--radii", "0.5"], tmp_path / "seq.tsv")[0]
        assert {k: str(v) for k, v in row.items() if k != "time"} == {k: v for k, v in cli.items() if k != "time"}
        r = c.post("/certify/quick", data={**GALLERY, "sigma": "0.25", "input_kind": "batch", "count": "5"})
        assert r.status_code == 400 and "a quick answer takes one image" in r.get_json()["error"]
    finally:
        jobs_of(app).shutdown()


@pytest.mark.e2e
def test_a_restart_adopts_a_live_worker(app_root):
    """A server that died (not stopped) leaves its worker running; the next server follows it instead of killing
    it, and can still cancel it."""
    first = make_app(app_root, start_jobs=True)
    jid = submit(first.test_client(), method="np", N="100000000", N0="10")
    pid = wait(first, jid, states=("running",))["pid"]
    jobs = jobs_of(first)
    jobs._jobs.clear()          # the first server "dies": it forgets its jobs and its lock goes
    jobs.lock.release()
    second = make_app(app_root, start_jobs=True)
    job = jobs_of(second).get(jid)
    assert job["state"] == "running" and job["pid"] == pid and os.path.exists(f"/proc/{pid}")
    second.test_client().post(f"/jobs/{jid}/cancel")
    assert wait(second, jid, timeout=120)["state"] == "cancelled"
    jobs_of(second).shutdown()
    jobs._stopping = True


@pytest.mark.e2e
def test_queue_bound_cancel_and_interrupted_resume(app_root):
    app = make_app(app_root, start_jobs=True, queue_size=1)
    c = app.test_client()
    long = {**GALLERY, "method": "np", "sigma": "0.25", "N": "100000000", "idx": "0"}
    first = submit(c, **long)
    wait(app, first, states=("running",))
    second = submit(c, **long)
    r = c.post("/certify", data={**long})
    assert r.status_code == 400 and "the job queue is full (1 jobs waiting)" in form_error(r)
    c.post(f"/jobs/{second}/cancel")
    assert jobs_of(app).get(second)["state"] == "cancelled"
    pid = jobs_of(app).get(first)["pid"]
    c.post(f"/jobs/{first}/cancel")
    assert wait(app, first, timeout=120)["state"] == "cancelled"
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    # a job running when the server stops is 'interrupted' on the next start, and can be resumed
    third = submit(c, **long)
    wait(app, third, states=("running",))
    jobs_of(app).shutdown()
    again = make_app(app_root)
    assert wait(again, third, timeout=120)["state"] == "interrupted"
    html = again.test_client().get(f"/jobs/{third}").get_data(as_text=True)
    assert 'id="resume"' in html
    again.test_client().post(f"/jobs/{third}/resume")
    assert jobs_of(again).get(third)["state"] == "queued"
    jobs_of(again).shutdown()


def test_the_forms_estimate_is_the_clis(client, monkeypatch):
    """The form's time estimate runs sample.py / certify.py --estimate's function (`sampling.estimate.estimate_run`)
    on the model's warm worker, once per sampling stage of the job's plan, and adds them up. (The pilot itself is
    tested with the estimate; here a stand-in records what it is asked.)"""
    import sys
    import types

    from certifynet.web import warm
    asked = []

    class Estimate:
        def __init__(self, config, mode):
            self.config, self.mode = config, mode

        def to_dict(self):
            per_input = 1000.0 if self.mode == "certify" else float(self.config.passes_per_input()[0])
            return {"passes_per_second": 5e4, "device": "cpu", "passes_per_input": per_input,
                    "exact": self.mode == "sample", "inputs": self.config.max or 1,
                    "total_passes": per_input * (self.config.max or 1),
                    "startup_seconds": 2.0, "seconds_per_input": per_input / 5e4, "method": self.mode, "notes": []}

    def estimate_run(config, mode="certify"):
        asked.append((config, mode))
        return Estimate(config, mode)
    monkeypatch.setitem(sys.modules, "certifynet.sampling.estimate", types.SimpleNamespace(estimate_run=estimate_run))
    monkeypatch.setattr(jobs_of(client).pool, "ask", lambda key, message: warm.estimate(message["estimate"]))
    r = client.post("/api/estimate?pilot=1", data={**GALLERY, "sigma": "0.25", "methods": ["np", "dsrs", "sequential"],
                                                   "N": "1000", "input_kind": "batch", "count": "20"})
    out = r.get_json()
    assert r.status_code == 200, out
    assert [mode for _, mode in asked] == ["sample", "certify"]
    sample, seq = (c for c, _ in asked)
    assert sample.q_dist == "truncated" and sample.max == 20 and sample.model == "models/lenet.pth" and not sample.out
    assert seq.sequential and seq.radii == [0.25, 0.5] and seq.max == 20
    pilot = out["pilot"]
    assert pilot["passes_per_input"] == 2100 + 1000 and not pilot["exact"] and pilot["inputs"] == 20
    assert pilot["seconds"] == pytest.approx(2.0 + 20 * 3100 / 5e4)
    assert out["passes_per_input"] == 2100 + 1100    # the plan's bound: the sequential cap N0 + N


def test_jobs_of_the_first_version_are_listed_and_shown(client, app_root):
    """A job.json written by the app's first version (stages as a dict, sorted; one method; files) is shown with
    its commands in stage order and its result."""
    jid = run(client, submit(client, method="np", input_kind="batch", count="2"))["id"]
    path = app_root / "results" / "web" / jid / "job.json"
    job = json.loads(path.read_text())
    stages = {s["stage"]: {k: v for k, v in s.items() if k not in ("stage", "labels")} for s in job["stages"]}
    old = {k: v for k, v in job.items() if k not in ("stages", "runs", "methods", "lane")}
    old.update(stages=stages, method="np", files={"counts": job["runs"][0]["counts"], "log": job["runs"][0]["log"]})
    path.write_text(json.dumps(old, sort_keys=True))
    jobs_of(client).shutdown()
    again = make_app(app_root)
    html = again.test_client().get(f"/jobs/{jid}").get_data(as_text=True)
    lines = re.search(r'<pre id="cli-command">(.*?)</pre>', html, re.S).group(1).splitlines()
    assert [ln.split()[0] for ln in lines] == ["cd", "certifynet-sample", "certifynet-certify", "certifynet-analyze"]
    assert 'id="summary-table"' in html and html.count('<tr><td><img src="/thumb/mnist5k/') == 2
    jobs_of(again).shutdown()
