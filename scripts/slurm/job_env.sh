#!/bin/bash
# Sourced by every template once it has cd'ed to the repository (SLURM runs a copy of the batch script from
# its spool folder, so the templates cannot locate the repository from their own path):
#   cd "${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"; source scripts/slurm/job_env.sh
# Activates VENV (default: the venv active at submission, else .venv in the repository, if present).
if [ ! -f scripts/certify.py ]; then
    echo "error: $PWD is not the Certify-Net repository; submit from its root or set REPO=<path>" >&2
    exit 2
fi
VENV=${VENV:-${VIRTUAL_ENV:-.venv}}
if [ -f "$VENV/bin/activate" ]; then
    set +u
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    set -u
fi
