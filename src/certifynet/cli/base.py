"""The torch-free half of the per-input scripts (sample, certify, predict, attack): their options and the
resumable row loop. certify.py --counts and every --help run without loading torch (cli.runs loads it)."""
from __future__ import annotations

import sys

from certifynet.cli import CliParser
from certifynet.paths import default_path, shown
from certifynet.progress import progress
from certifynet.records import RowLog


def per_input_parser(prog: str, doc: str, out_help: str) -> CliParser:
    """The parser shared by sample.py / certify.py / predict.py: model, data, inputs, noise, --out."""
    p = CliParser(prog=prog, description=doc)
    p.add_argument("--out", help=out_help)
    add_common_run_args(p)
    add_noise_args(p)
    add_image_args(p)
    return p


def add_common_run_args(p):
    """Flags shared by sample.py / certify.py / predict.py (model, data, inputs, sharding, speed)."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="classifier checkpoint, ours or a reference layout (required; certify.py: or --counts)")
    g.add_argument("--arch", help="architecture, when the checkpoint does not name it")
    g.add_argument("--dataset", help="dataset (default: from the checkpoint)")
    g.add_argument("--normalization", default=None,
                   help="override the model's input normalisation: dataset | identity | center (DSRS ImageNet) | MEAN/STD")
    g.add_argument("--split", default="test", choices=["train", "test"], help="dataset split to certify")
    g.add_argument("--data-dir", default=default_path("data"), help="dataset folder")
    g.add_argument("--denoiser", help="denoiser checkpoint placed in front of the classifier (denoised smoothing)")
    g = p.add_argument_group("which inputs")
    g.add_argument("--start", type=int, default=0, help="first dataset index")
    g.add_argument("--end", type=int, default=None, help="stop before this index (default: the end of the split)")
    g.add_argument("--skip", type=int, default=1, help="take every skip-th input (Cohen's --skip)")
    g.add_argument("--max", type=int, default=None, help="at most this many inputs")
    g.add_argument("--shard", default=None, help="i/n: the i-th of n contiguous parts (default from SLURM_ARRAY_TASK_ID/COUNT)")
    g = p.add_argument_group("speed and output")
    g.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="on the CPU, run the eager model instead of a frozen TorchScript trace")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW memory (channels_last is on by default: faster convolutions)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (without a terminal, progress is printed as plain lines every 30 s)")
    g.add_argument("--inputs-per-batch", type=int, default=1, metavar="K",
                   help="sample the N0 selection / ISS pilot draws of K inputs together, sharing forward passes of "
                        "up to --batch rows (each input keeps its own noise stream). Meant for GPUs, where small "
                        "forward passes are launch-bound; no gain measured on the CPU")
    g.add_argument("--cuda-graph", action="store_true",
                   help="on CUDA, replay each full batch from a captured CUDA graph (off by default: not yet "
                        "measured on a GPU; no effect on the CPU)")


def add_noise_args(p):
    g = p.add_argument_group("noise and sample sizes")
    g.add_argument("--sigma", type=float, default=None, help="σ of the smoothing noise in [0,1] pixel units (required)")
    g.add_argument("--dist", default="gaussian", choices=["gaussian", "general_gaussian"], help="P")
    g.add_argument("--k", type=int, default=0, help="generalized-Gaussian k (0: Gaussian; k > 0 implies general_gaussian)")
    g.add_argument("--N0", type=int, default=100, help="selection draws: ĉ_A is their top class")
    g.add_argument("--N", type=int, default=100_000, help="estimation draws per distribution (the cap under --iss)")
    g.add_argument("--alpha", type=float, default=0.001, help="failure probability α of each certificate")
    g.add_argument("--seed", type=int, default=0, help="noise seed; input idx draws from streams seeded by (seed, idx)")
    g.add_argument("--select", default="n0", choices=["n0", "label"],
                   help="class to count: top class of N0 selection draws (Cohen), or the true label (DSRS reference)")
    g.add_argument("--q-dist", default="none", choices=["none", "truncated", "rescaled"], help="DSRS's Q")
    g.add_argument("--q-sigma", type=float, default=None, help="σ_Q for --q-dist rescaled (default 0.8σ)")
    g.add_argument("--q-percentile", default="x",
                   help="truncated Q: the percentile p_T in (0,1], or heuristic 'x' / 'x+' from the P bound")
    g.add_argument("--iss", default=None, choices=["absolute", "relative"], help="input-specific sample sizes")
    g.add_argument("--iss-decline", type=float, default=0.05, help="ISS allowed radius decline ε")
    g.add_argument("--iss-n0", type=int, default=2000, help="ISS pilot draws (they also pick ĉ_A)")


def add_image_args(p):
    """--image: certify one image file (e.g. one uploaded to the web app) instead of dataset inputs."""
    g = p.add_argument_group("one image instead of the dataset")
    g.add_argument("--image", help="a PNG/JPEG of the model's size and channels (8-bit, read as value/255) or a "
                                   ".npy float array (C,H,W) in [0,1]; it is input idx 0")
    g.add_argument("--image-label", type=int, default=-1, help="its true label (-1: unknown)")


def nothing_to_do(indices, shard) -> bool:
    """True (and says so) when this shard selects no inputs: an array with more tasks than inputs."""
    if indices:
        return False
    print(f"shard {shard[0]}/{shard[1]} selects no inputs; nothing to do", file=sys.stderr)
    return True


def run_batches(log: RowLog, indices, make_rows, group: int, desc: str, show: bool = True) -> int:
    """Write the rows make_rows(idxs) yields, for the indices not yet in the log, `group` indices per call;
    each row is written (and flushed) as it comes. Returns how many indices were to do."""
    todo = [i for i in indices if i not in log.done]
    if len(todo) < len(indices):
        print(f"resuming: {len(indices) - len(todo)} of {len(indices)} inputs already in {shown(log.path)}",
              file=sys.stderr)
    with progress(len(todo), desc, "input", enabled=show) as bar:
        for k in range(0, len(todo), group):
            for row in make_rows(todo[k:k + group]):
                log.write(row)
                bar.update(1)
    return len(todo)


def run_rows(log: RowLog, indices, make_row, desc: str, show: bool = True, prefetch=None) -> int:
    """Write make_row(idx) for every idx not yet in the log; returns how many were written.
    `prefetch(idxs)` (InputSampler.prefetcher) is called ahead of each group of `prefetch.group` inputs."""
    def make_rows(idxs):
        if prefetch is not None:
            prefetch(idxs)
        for idx in idxs:
            yield make_row(idx)
    return run_batches(log, indices, make_rows, getattr(prefetch, "group", 1), desc, show)
