"""The SLURM templates on a real one-node scheduler (issue 17): submit_pipeline.sh runs train → 4-task certify
array → merge + analyze through sbatch with afterok dependencies, a task requeued mid-run (preemption) resumes,
a task killed with kill -9 fails, holds the merge back, and its rerun resumes; the sample array chains into
certify --counts. Every merged log equals one unsharded certify.py run in every column but time."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from slurm_cluster import ACTIVE, ROOT, n_rows, python_env

from certifynet.records import read_meta, read_rows, shard_path

pytestmark = pytest.mark.e2e   # every test here runs scripts as subprocesses

SLURM_DIR = os.path.join(ROOT, "scripts", "slurm")
SHARDS, DIGITS = 4, 40
PER_SHARD = DIGITS // SHARDS
# what every certify/sample run shares: the merged logs are compared with one unsharded run of these
RUN = {"SIGMA": "0.25", "N0": "20", "N": "500", "BATCH": "520", "ALPHA": "0.001", "SEED": "0", "MAX": str(DIGITS)}
# a CPU-only partition: no GPU requests (the templates ask for GPUs), resources that fit a 2-core node
RESOURCES = {"PARTITION": "debug", "CPU_ONLY": "1",
             "TRAIN_OPTS": f"--cpus-per-task={min(2, os.cpu_count() or 1)} --mem=2G --time=00:20:00",
             "TASK_OPTS": "--cpus-per-task=1 --mem=1G --time=00:20:00", "MERGE_OPTS": "--cpus-per-task=1 --mem=1G"}
TASK_SBATCH = ["--gres=none", *RESOURCES["TASK_OPTS"].split()]   # the same options for tasks submitted by hand


def rows_by_idx(path):
    """{idx: row without the time column}."""
    _, rows = read_rows(path)
    return {int(r["idx"]): {k: v for k, v in r.items() if k != "time"} for r in rows}


def text(path):
    with open(path) as f:
        return f.read()


def submit_pipeline(slurm, folder, **settings):
    """bash submit_pipeline.sh (run from another folder); returns the job ids it printed and the jobs' env."""
    env = slurm.env(**RUN, **RESOURCES, **python_env(), SHARDS=SHARDS, OUT=f"{folder}/res/np.tsv",
                    LOGS=f"{folder}/logs", **settings)
    r = subprocess.run(["bash", os.path.join(SLURM_DIR, "submit_pipeline.sh")], capture_output=True, text=True,
                       env=env, cwd=folder)
    assert r.returncode == 0, r.stderr
    ids = dict(re.findall(r"^(train|certify|merge): +(\d+)", r.stdout, re.M))
    del env["SHARDS"]    # the script does not pass it on: returned is the environment the jobs get
    return ids, env


def wait_for_rows(slurm, array_id, task, path, rows, timeout=240):
    """Wait until array task `task` has written `rows` rows to path (the file is polled every 10 ms, the task's
    state every second: it must not end first)."""
    deadline, checked = time.time() + timeout, 0.0
    while n_rows(path) < rows:
        if time.time() - checked > 1:
            checked = time.time()
            state = slurm.states(array_id).get(f"{array_id}_{task}")
            assert state in ("PENDING", "RUNNING", None), f"task {task} is {state} before it wrote {rows} rows"
        assert time.time() < deadline, f"task {task} wrote no {rows} rows in {timeout} s:\n{slurm.queue()}"
        time.sleep(0.01)


def resumed_rows(log):
    """k of the task log's 'resuming: k of n inputs already in ...' line (None: it started afresh)."""
    m = re.search(rf"resuming: (\d+) of {PER_SHARD} inputs already in", text(log))
    return m and int(m.group(1))


def task_pid(slurm, array_id, task, timeout=240):
    """PID of the certify.py process that array task `task` of job `array_id` runs on this cluster (in /proc:
    job ids repeat across clusters, so its SLURM_CONF must be ours too)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            except OSError:
                continue
            if (len(cmd) > 1 and cmd[1].endswith(b"scripts/certify.py")
                    and env.get(b"SLURM_CONF") == slurm.conf.encode()
                    and env.get(b"SLURM_ARRAY_JOB_ID") == array_id.encode()
                    and env.get(b"SLURM_ARRAY_TASK_ID") == str(task).encode()):
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no certify.py process of task {array_id}_{task} in {timeout} s")


@pytest.fixture(scope="module")
def pipeline(slurm, tmp_path_factory):
    """The whole chain through submit_pipeline.sh; task 1 is requeued (preempted) after its first row. The
    unsharded reference run is computed while the array runs."""
    import torch

    from certifynet.cli import certify
    folder = str(tmp_path_factory.mktemp("pipeline"))
    t0 = time.time()
    ids, env = submit_pipeline(slurm, folder, DATASET="mnist5k", ARCH="lenet", OUTDIR=f"{folder}/model", EPOCHS=1,
                               TRAIN_BATCH=100, LR=0.05,
                               TRAIN_EXTRA="--train-subset 2000 --test-subset 200 --no-progress")
    train, array, merge = ids["train"], ids["certify"], ids["merge"]
    assert slurm.wait(train, timeout=300, what="the train job") == {train: "COMPLETED"}, text(
        f"{folder}/logs/cn-train_{train}.out")
    t_train = time.time() - t0

    out = env["OUT"]
    wait_for_rows(slurm, array, 1, shard_path(out, (1, SHARDS)), 1)
    slurm.run("scontrol", "requeue", f"{array}_1")
    requeued_after = n_rows(shard_path(out, (1, SHARDS)))
    # SLURM holds a requeued job back for about two minutes (BeginTime); let it start as soon as it can
    slurm.wait(array, until=lambda s: s.get(f"{array}_1") == "PENDING", timeout=60, what="task 1 to be requeued")
    slurm.run("scontrol", "update", f"JobId={array}_1", "StartTime=now")

    t1 = time.time()
    reference = f"{folder}/reference.tsv"
    model = env["OUTDIR"] + "/checkpoint.pth"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # as the tasks (OMP_NUM_THREADS=1): bitwise-equal forward passes
    try:
        assert certify.main(["--model", model, "--sigma", RUN["SIGMA"], "--N0", RUN["N0"], "--N", RUN["N"],
                             "--batch", RUN["BATCH"], "--alpha", RUN["ALPHA"], "--seed", RUN["SEED"],
                             "--max", RUN["MAX"], "--out", reference]) == 0
    finally:
        torch.set_num_threads(threads)
    t_reference = time.time() - t1

    states = slurm.wait(train, array, merge, timeout=400, what="the pipeline")
    print(f"pipeline: train {t_train:.0f} s, unsharded reference {t_reference:.0f} s, "
          f"all {time.time() - t0:.0f} s", flush=True)
    return SimpleNamespace(folder=folder, env=env, out=out, model=model, reference=reference, ids=ids,
                           states=states, requeued_after=requeued_after)


def test_pipeline_jobs_all_completed(slurm, pipeline):
    ids, states = pipeline.ids, pipeline.states
    expected = {ids["train"], *(f"{ids['certify']}_{i}" for i in range(SHARDS)), ids["merge"]}
    assert states == dict.fromkeys(expected, "COMPLETED"), slurm.queue()
    record = slurm.completion_record()   # jobcomp/filetxt: the final state of every job, as sacct would give
    assert {k: record[k] for k in expected} == states
    assert "epoch 1/1" in text(f"{pipeline.folder}/logs/cn-train_{ids['train']}.out")


def test_merged_log_equals_unsharded_run_and_is_analyzed(pipeline):
    merged, single = rows_by_idx(pipeline.out), rows_by_idx(pipeline.reference)
    assert sorted(merged) == list(range(DIGITS)) and merged == single
    assert n_rows(pipeline.out) == DIGITS     # no row twice
    for i in range(SHARDS):   # each task found its shard in SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT
        meta = read_meta(shard_path(pipeline.out, (i, SHARDS)))
        assert meta["shard"] == [i, SHARDS] and "--shard" not in meta["command"]
    analysis = pipeline.out[:-len(".tsv")] + "_analysis"
    for name in ("report.md", "table.csv", "table.md", "certified_accuracy.png"):
        assert os.path.getsize(os.path.join(analysis, name)) > 0, name
    log = text(f"{pipeline.folder}/logs/cn-merge_{pipeline.ids['merge']}.out")
    assert f"merged {DIGITS} rows from {SHARDS} files" in log and "duplicate" not in log


def test_requeued_task_restarted_and_resumed_its_shard(slurm, pipeline):
    array = pipeline.ids["certify"]
    assert slurm.job_field(f"{array}_1", "Restarts") == "1"
    log = f"{pipeline.folder}/logs/cn-certify_{array}_1.out"   # SLURM truncates it: the restarted run's output
    resumed = resumed_rows(log)
    assert resumed is not None and pipeline.requeued_after <= resumed < PER_SHARD, text(log)[-2000:]


def test_kill9_fails_the_task_holds_the_merge_and_its_rerun_resumes(slurm, pipeline, tmp_path):
    folder = str(tmp_path)
    ids, env = submit_pipeline(slurm, folder, SKIP_TRAIN=1, MODEL=pipeline.model, ANALYSIS="")
    array, merge = ids["certify"], ids["merge"]
    victim = shard_path(env["OUT"], (2, SHARDS))
    pid = task_pid(slurm, array, 2)
    wait_for_rows(slurm, array, 2, victim, 1)
    os.kill(pid, signal.SIGKILL)
    killed_at = n_rows(victim)
    states = slurm.wait(array, merge, timeout=300, what="the array to end and the merge to give up",
                        until=lambda s: ACTIVE.isdisjoint(v for k, v in s.items() if k != merge)
                        and slurm.job_field(merge, "Reason") == "DependencyNeverSatisfied")
    assert states == {**{f"{array}_{i}": "COMPLETED" for i in (0, 1, 3)}, f"{array}_2": "FAILED", merge: "PENDING"}
    assert 1 <= killed_at < PER_SHARD and not os.path.exists(env["OUT"])   # afterok: no merge ran

    # a one-task array without SHARDS is refused: it would run every input as shard 0 of 1
    assert "SHARDS" not in env    # submit_pipeline.sh does not pass it on: the array's tasks count themselves
    lone = slurm.sbatch("--array=2", *TASK_SBATCH, f"--output={folder}/logs/lone_%A_%a.out",
                        "scripts/slurm/certify.sbatch", env=env)
    assert slurm.wait(lone) == {f"{lone}_2": "FAILED"}
    assert "set SHARDS=<n> to rerun single tasks" in text(f"{folder}/logs/lone_{lone}_2.out")

    # the documented rerun: SHARDS=4 sbatch --array=2 ..., and the held merge is pointed at it
    rerun = slurm.sbatch("--array=2", *TASK_SBATCH, f"--output={folder}/logs/rerun_%A_%a.out",
                         "scripts/slurm/certify.sbatch", env={**env, "SHARDS": str(SHARDS)})
    slurm.run("scontrol", "update", f"JobId={merge}", f"Dependency=afterok:{rerun}")
    assert slurm.wait(rerun, merge) == {f"{rerun}_2": "COMPLETED", merge: "COMPLETED"}
    assert resumed_rows(f"{folder}/logs/rerun_{rerun}_2.out") == killed_at
    log = text(f"{folder}/logs/cn-merge_{merge}.out")
    assert f"merged {DIGITS} rows from {SHARDS} files" in log and "duplicate" not in log
    assert n_rows(env["OUT"]) == DIGITS and rows_by_idx(env["OUT"]) == rows_by_idx(pipeline.reference)


def test_sample_array_then_merge_then_certify_from_counts(slurm, pipeline, tmp_path):
    folder = str(tmp_path)
    counts, log = f"{folder}/res/counts.csv", f"{folder}/res/np_from_counts.tsv"
    os.makedirs(f"{folder}/logs")
    env = slurm.env(**RUN, **python_env(), MODEL=pipeline.model, OUT=counts)
    sample = slurm.sbatch("--array=0-1", *TASK_SBATCH, f"--output={folder}/logs/%x_%A_%a.out",
                          "scripts/slurm/sample.sbatch", env=env)
    merge = slurm.sbatch(f"--dependency=afterok:{sample}", *RESOURCES["MERGE_OPTS"].split(),
                         f"--output={folder}/logs/%x_%j.out", "scripts/slurm/merge_analyze.sbatch", env=env)
    certify = slurm.sbatch(f"--dependency=afterok:{merge}", *RESOURCES["MERGE_OPTS"].split(),
                           f"--output={folder}/logs/certify_%j.out", "--wrap",
                           f"{sys.executable} scripts/certify.py --counts {counts} --out {log}",
                           env=env)
    states = slurm.wait(sample, merge, certify, timeout=400, what="sample → merge → certify")
    assert states == {f"{sample}_0": "COMPLETED", f"{sample}_1": "COMPLETED", merge: "COMPLETED",
                      certify: "COMPLETED"}, slurm.queue()
    assert n_rows(counts) == DIGITS and not os.path.exists(counts[:-4] + "_analysis")   # counts: no analysis
    assert rows_by_idx(log) == rows_by_idx(pipeline.reference)


def test_submit_pipeline_options_become_sbatch_options(tmp_path):
    """Without a scheduler (a fake sbatch records its arguments): the resource variables reach sbatch's command
    line, SHARDS is not passed to the jobs, and SKIP_TRAIN=1 without a model submits nothing."""
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text('#!/bin/bash\necho "$* SHARDS=${SHARDS:-unset}" >> "$SBATCH_LOG"\n'
                    'echo "$((100 + $(wc -l < "$SBATCH_LOG")))"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "SBATCH_LOG": str(tmp_path / "calls"), "SHARDS": "4", "OUT": str(tmp_path / "res" / "x.tsv"),
           "LOGS": str(tmp_path / "logs"), "ANALYSIS": "",
           **RESOURCES}
    script = os.path.join(SLURM_DIR, "submit_pipeline.sh")
    r = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"merge:   103 -> {env['OUT']}"     # ANALYSIS="": no analysis
    logs, cpus = env["LOGS"], min(2, os.cpu_count() or 1)
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"--parsable --partition=debug --gres=none --output={logs}/%x_%j.out --cpus-per-task={cpus} --mem=2G "
        "--time=00:20:00 scripts/slurm/train.sbatch SHARDS=unset",
        f"--parsable --partition=debug --dependency=afterok:101 --array=0-3 --gres=none --output={logs}/%x_%A_%a.out "
        "--cpus-per-task=1 --mem=1G --time=00:20:00 scripts/slurm/certify.sbatch SHARDS=unset",
        f"--parsable --partition=debug --dependency=afterok:102 --output={logs}/%x_%j.out --cpus-per-task=1 --mem=1G "
        "scripts/slurm/merge_analyze.sbatch SHARDS=unset"]
    os.remove(tmp_path / "calls")
    r = subprocess.run(["bash", script], env={**env, "SKIP_TRAIN": "1", "MODEL": str(tmp_path / "none.pth")},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "SKIP_TRAIN=1 but MODEL" in r.stderr and not os.path.exists(tmp_path / "calls")
