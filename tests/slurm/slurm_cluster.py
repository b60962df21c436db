"""Client side of the one-node test cluster (scripts/slurm/testing/cluster.sh) that conftest.py starts."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER_SH = os.path.join(ROOT, "scripts", "slurm", "testing", "cluster.sh")
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "STAGE_OUT"}


def unavailable_reason():
    """Why a cluster cannot be had here (None: it can), after installing the packages where we may."""
    if not sys.platform.startswith("linux"):
        return f"SLURM tests need Linux, not {sys.platform}"
    r = subprocess.run(["bash", CLUSTER_SH, "missing"], capture_output=True, text=True)
    missing = r.stdout.strip()
    if os.geteuid() != 0:
        return "SLURM tests need root (to install slurm-wlm/munge and run slurmd)" + (
            f"; missing: {missing}" if missing else "")
    if missing:
        t0 = time.time()
        try:
            r = subprocess.run(["bash", CLUSTER_SH, "install"], capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return "SLURM unavailable: installing slurm-wlm, munge took over 10 minutes"
        if r.returncode:
            lines = (r.stderr or r.stdout).strip().splitlines() or [f"exit code {r.returncode}"]
            return f"SLURM unavailable: {lines[-1].removeprefix('error: ')}"
        print(f"installed slurm-wlm, munge in {time.time() - t0:.0f} s", file=sys.stderr)
    return None


class Cluster:
    """Client side of the test cluster: sbatch, squeue and scontrol with its SLURM_CONF."""

    def __init__(self, folder):
        self.folder = folder
        self.conf = os.path.join(folder, "slurm.conf")

    def env(self, **extra):
        """The environment for client commands and jobs: ours, minus any SLURM_* of an enclosing job."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        env.update(SLURM_CONF=self.conf, **{k: str(v) for k, v in extra.items()})
        return env

    def run(self, *cmd, env=None, cwd=ROOT, check=True):
        r = subprocess.run(list(cmd), capture_output=True, text=True, env=env or self.env(), cwd=cwd)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def sbatch(self, *args, env=None, cwd=ROOT):
        """Submit; returns the job id. Submitted from the repository root (the templates' relative paths), so a
        job without --output would write slurm-<id>.out there (a stray slurm-9_3.out was once committed): such
        a job writes it to the cluster's own temporary folder instead."""
        if not any(a.startswith(("--output", "-o")) for a in args):
            name = "slurm-%A_%a.out" if any(a.startswith(("--array", "-a")) for a in args) else "slurm-%j.out"
            args = (f"--output={os.path.join(self.folder, name)}", *args)
        return self.run("sbatch", "--parsable", *args, env=env, cwd=cwd).stdout.strip().split(";")[0]

    def states(self, *job_ids):
        """{'12' or '12_3': state} of the given jobs (array jobs: every task), finished ones included."""
        out = self.run("squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i %T").stdout
        return dict(line.split() for line in out.splitlines())

    def job_field(self, job_id, field):
        """A field of `scontrol show job` (e.g. Reason, Restarts)."""
        out = self.run("scontrol", "show", "job", job_id).stdout
        return re.search(rf"\b{field}=(\S*)", out).group(1)

    def wait(self, *job_ids, until=None, timeout=300, what="the jobs to finish"):
        """Poll until until(states) (default: none of the jobs active); returns the last states."""
        until = until or (lambda s: s and not ACTIVE & set(s.values()))
        deadline = time.time() + timeout
        while True:
            states = self.states(*job_ids)
            if until(states):
                return states
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}: {states}\n{self.queue()}")
            time.sleep(0.5)

    def queue(self):
        return self.run("squeue", "-t", "all", "-o", "%i %j %T %r %M", check=False).stdout

    def completion_record(self):
        """{job: JobState} from the jobcomp/filetxt record (the last line per job: a requeued one has two)."""
        states = {}
        with open(os.path.join(self.folder, "jobcomp.txt")) as f:
            for line in f:
                fields = dict(re.findall(r"(\w+)=(\S*)", line))
                key = (f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields
                       else fields["JobId"])
                states[key] = fields["JobState"]
        return states


def python_env():
    """VENV for the templates (the venv running these tests), or PATH led by this Python's folder."""
    if sys.prefix != sys.base_prefix:
        return {"VENV": sys.prefix}
    return {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def n_rows(path):
    """Complete rows of a row log (its header and a torn last line not counted)."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return max(0, sum(1 for ln in f if ln.endswith("\n")) - 1)

