"""The options of the per-input scripts (sample, certify, predict, attack): argparse over `SamplingConfig`,
whose fields are the dests and whose defaults are the parser's (defined once, in the config). Torch-free:
every --help, and certify.py --counts, run without loading torch."""
from __future__ import annotations

from certifynet.cli import CliParser
from certifynet.cli.diffusion_flags import add_diffusion_args
from certifynet.sampling.config import CHOICES, SamplingConfig


def per_input_parser(prog: str, doc: str, out_help: str) -> CliParser:
    """The parser shared by sample.py / certify.py / predict.py / attack.py: model, data, inputs, noise, --out."""
    p = CliParser(prog=prog, description=doc)
    p.add_argument("--out", help=out_help)
    d = SamplingConfig()
    add_common_run_args(p, d)
    add_noise_args(p, d)
    add_image_args(p, d)
    return p


def add_common_run_args(p, d: SamplingConfig | None = None):
    """Options shared by the per-input scripts (model, data, inputs, sharding, speed); defaults from `d`."""
    d = d or SamplingConfig()
    g = p.add_argument_group("model and data")
    g.add_argument("--model",
                   help="classifier checkpoint, ours or a reference layout (required; certify.py: or --counts)")
    g.add_argument("--arch", help="architecture, when the checkpoint does not name it")
    g.add_argument("--dataset", help="dataset (default: from the checkpoint)")
    g.add_argument("--normalization", default=d.normalization,
                   help="override the model's input normalisation: "
                        "dataset | identity | center (DSRS ImageNet) | MEAN/STD")
    g.add_argument("--split", default=d.split, choices=CHOICES["split"], help="dataset split to certify")
    g.add_argument("--data-dir", default=d.data_dir, help="dataset folder")
    g.add_argument("--denoiser", help="denoiser placed in front of the classifier (denoised smoothing): a checkpoint, "
                                      "or a diffusion model (a diffusers folder or an OpenAI .pt; docs/diffusion.md)")
    g = p.add_argument_group("which inputs")
    g.add_argument("--start", type=int, default=d.start, help="first dataset index")
    g.add_argument("--end", type=int, default=d.end, help="stop before this index (default: the end of the split)")
    g.add_argument("--skip", type=int, default=d.skip, help="take every skip-th input (Cohen's --skip)")
    g.add_argument("--max", type=int, default=d.max, help="at most this many inputs")
    g.add_argument("--shard", default=d.shard,
                   help="i/n: the i-th of n contiguous parts (default from SLURM_ARRAY_TASK_ID/COUNT)")
    g = p.add_argument_group("speed and output")
    g.add_argument("--batch", type=int, default=d.batch, help="noisy copies per forward pass")
    g.add_argument("--device", default=d.device, help="auto (CUDA when available), cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="on the CPU, run the eager model instead of a frozen TorchScript trace")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW memory (channels_last is on by default: faster convolutions)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (without a terminal, progress is printed as plain lines every 30 s)")
    g.add_argument("--inputs-per-batch", type=int, default=d.inputs_per_batch, metavar="K",
                   help="sample the N0 selection / ISS pilot draws of K inputs together, sharing forward passes of "
                        "up to --batch rows (each input keeps its own noise stream). Meant for GPUs, where small "
                        "forward passes are launch-bound; no gain measured on the CPU")
    g.add_argument("--cuda-graph", action="store_true",
                   help="on CUDA, replay each full batch from a captured CUDA graph (off by default: not yet "
                        "measured on a GPU; no effect on the CPU)")
    add_diffusion_args(p, d)


def add_noise_args(p, d: SamplingConfig | None = None):
    """The noise, the sample sizes, α, the seed, DSRS's Q and ISS; defaults from `d`."""
    d = d or SamplingConfig()
    g = p.add_argument_group("noise and sample sizes")
    g.add_argument("--sigma", type=float, default=d.sigma,
                   help="σ of the smoothing noise in [0,1] pixel units (required)")
    g.add_argument("--dist", default=d.dist, choices=CHOICES["dist"], help="P")
    g.add_argument("--k", type=int, default=d.k,
                   help="generalized-Gaussian k (0: Gaussian; k > 0 implies general_gaussian)")
    g.add_argument("--N0", type=int, default=d.N0, help="selection draws: ĉ_A is their top class")
    g.add_argument("--N", type=int, default=d.N, help="estimation draws per distribution (the cap under --iss)")
    g.add_argument("--alpha", type=float, default=d.alpha, help="failure probability α of each certificate")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="noise seed; input idx draws from streams seeded by (seed, idx)")
    g.add_argument("--select", default=d.select, choices=CHOICES["select"],
                   help="class to count: top class of N0 selection draws (Cohen), or the true label (DSRS reference)")
    g.add_argument("--q-dist", default=d.q_dist, choices=CHOICES["q_dist"], help="DSRS's Q")
    g.add_argument("--q-sigma", type=float, default=d.q_sigma, help="σ_Q for --q-dist rescaled (default 0.8σ)")
    g.add_argument("--q-percentile", default=d.q_percentile,
                   help="truncated Q: the percentile p_T in (0,1], or heuristic 'x' / 'x+' from the P bound")
    g.add_argument("--iss", default=d.iss, choices=CHOICES["iss"], help="input-specific sample sizes")
    g.add_argument("--iss-decline", type=float, default=d.iss_decline, help="ISS allowed radius decline ε")
    g.add_argument("--iss-n0", type=int, default=d.iss_n0, help="ISS pilot draws (they also pick ĉ_A)")


def add_image_args(p, d: SamplingConfig | None = None):
    """--image: certify one image file (e.g. one uploaded to the web app) instead of dataset inputs."""
    d = d or SamplingConfig()
    g = p.add_argument_group("one image instead of the dataset")
    g.add_argument("--image", help="a PNG/JPEG of the model's size and channels (8-bit, read as value/255) or a "
                                   ".npy float array (C,H,W) in [0,1]; it is input idx 0")
    g.add_argument("--image-label", type=int, default=d.image_label, help="its true label (-1: unknown)")
