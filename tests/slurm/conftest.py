"""A real one-node SLURM cluster for the tests (scripts/slurm/testing/cluster.sh), shared by the session.

Needs root: the packages (slurm-wlm, munge) are installed with apt-get when missing, and slurmd launches the
jobs. Without root, packages or a working apt-get, the SLURM tests skip with the reason.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from slurm_cluster import CLUSTER_SH, Cluster, unavailable_reason


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A started one-node cluster (skips where SLURM cannot be had); stopped at the end of the session."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    folder = str(tmp_path_factory.mktemp("slurm"))
    t0 = time.time()
    r = subprocess.run(["bash", CLUSTER_SH, "start", folder], capture_output=True, text=True)
    try:
        if r.returncode:
            logs = {n: open(os.path.join(folder, n)).read()[-1500:] for n in ("slurmctld.log", "slurmd.log")
                    if os.path.isfile(os.path.join(folder, n))}
            pytest.fail(f"the test cluster did not start: {r.stderr.strip()}\n{logs}")
        print(f"cluster up in {time.time() - t0:.1f} s", file=sys.stderr)
        yield Cluster(folder)
    finally:
        subprocess.run(["bash", CLUSTER_SH, "stop", folder], capture_output=True, text=True)
