"""`SamplingConfig`: every option of a per-input run (sample.py, certify.py, predict.py, attack.py), typed.

- Each default is defined once, here: the CLI's parsers (`cli.base`) and the web form (`web.forms`) read
  them from `SamplingConfig()`, so they cannot drift apart.
- `validate(mode)` is the one check of a run's options, before anything is loaded or written. Its errors name
  the arguments as fields (`{q_sigma} does not apply without {q_dist} rescaled`): Python reads `q_sigma`,
  the CLI prints `--q-sigma`. Options that do not apply to a mode are refused only when set: given
  explicitly (`given`, which `from_namespace` takes from the parsed command line) or away from the default.
- `to_argv()` spells the configuration back as the command line that gives it (the web job's commands and
  the `command` a sidecar records); `cli.base`'s parser turns that argv into an equal configuration.

Torch-free: `certify.py --counts` and every `--help` build on it without loading torch.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from certifynet.bounds import check_run_sizes
from certifynet.certify.outcome import UNKNOWN_LABEL
from certifynet.denoise.diffusion.options import DIFFUSION_FIELDS, DiffusionOptions
from certifynet.errors import CertifyNetError, check_alpha, check_sample_sizes, check_seed, check_sigma, flag, refuse
from certifynet.paths import default_path
from certifynet.records import check_selection
from certifynet.sampling.device import parse_device

MODES = ("sample", "certify", "predict", "attack")
DEFAULT_OUT = {"sample": "results/counts.csv", "predict": "results/predict.tsv"}  # under the project root
CHOICES = {"split": ("train", "test"), "dist": ("gaussian", "general_gaussian"), "select": ("n0", "label"),
           "q_dist": ("none", "truncated", "rescaled"), "iss": ("absolute", "relative"),
           "sequential_rule": ("gs", "cs"), "futility": ("none", "upper", "projected")}
# attack.py's own defaults: PREDICT at x+δ with fewer draws; σ, k and P are adopted from the audited log.
ATTACK_DEFAULTS = {"N": 10_000, "k": None, "dist": None}
# Flags without a value: the spelling that sets the field away from its default.
SWITCHES = {"amp": "--amp", "cuda_graph": "--cuda-graph", "sequential": "--sequential",
            "optimize": "--no-optimize", "channels_last": "--no-channels-last", "progress": "--no-progress",
            "diffusion_continuous": "--diffusion-continuous", "diffusion_no_clip": "--diffusion-no-clip",
            "estimate": "--estimate"}
# The sequential options (certify.py --sequential): the rule, and the calibrated rule's futility stop.
SEQUENTIAL_OPTIONS = ("sequential_rule", "futility", "futility_level")
# What PREDICT (predict.py, and attack.py at x+δ) does not use: it counts N draws of P and tests the top two.
NOT_FOR_PREDICT = ("N0", "select", "q_dist", "q_sigma", "q_percentile", "iss", "iss_decline", "iss_n0")
WHY_NOT = {"predict": "to predict.py (PREDICT counts N draws of P and tests the top two classes)",
           "attack": "to attack.py (it attacks under P, then PREDICT counts N draws of P at x+δ)"}


def _default_data_dir() -> str:
    return default_path("data")


_DIFF = DiffusionOptions()   # the diffusion flags' defaults are DiffusionOptions' (defined there, once)


@dataclass
class SamplingConfig:
    """The options of one run; the fields are the CLI's argparse dests, in the order `to_argv` spells them."""
    counts: str | None = None            # certify.py: certify this counts file (no model)
    method: str | None = None            # certify.py: np | dsrs | iss-np | iss-dsrs (default: what the flags give)
    model: str | None = None
    arch: str | None = None
    dataset: str | None = None
    normalization: str | None = None
    denoiser: str | None = None
    # a diffusion --denoiser (diffusers folder or OpenAI checkpoint): the fields of DiffusionOptions
    diffusion_input_range: str | None = _DIFF.diffusion_input_range
    diffusion_prediction: str | None = _DIFF.diffusion_prediction
    diffusion_schedule: str | None = _DIFF.diffusion_schedule
    diffusion_t_rule: str = _DIFF.diffusion_t_rule
    diffusion_timestep_rescale: float | None = _DIFF.diffusion_timestep_rescale
    diffusion_continuous: bool | None = _DIFF.diffusion_continuous
    diffusion_resolution: int | None = _DIFF.diffusion_resolution
    diffusion_steps: int = _DIFF.diffusion_steps
    diffusion_no_clip: bool = _DIFF.diffusion_no_clip
    openai_heads: int | None = _DIFF.openai_heads
    openai_head_channels: int | None = _DIFF.openai_head_channels
    qkv_order: str | None = _DIFF.qkv_order
    split: str = "test"
    data_dir: str = field(default_factory=_default_data_dir)
    start: int = 0
    end: int | None = None
    skip: int = 1
    max: int | None = None
    shard: str | None = None             # 'i/n'; default from SLURM_ARRAY_TASK_ID/COUNT
    image: str | None = None             # one image file instead of the dataset (input idx 0)
    image_label: int = UNKNOWN_LABEL
    sigma: float | None = None
    dist: str | None = "gaussian"
    k: int | None = 0
    N: int = 100_000
    alpha: float = 0.001
    batch: int = 1000
    seed: int = 0
    select: str = "n0"
    N0: int = 100
    q_dist: str = "none"
    q_percentile: str = "x"
    q_sigma: float | None = None         # rescaled Q: default 0.8σ
    iss: str | None = None
    iss_decline: float = 0.05
    iss_n0: int = 2000
    device: str = "auto"
    amp: bool = False
    optimize: bool = True
    channels_last: bool = True
    progress: bool = True
    inputs_per_batch: int = 1
    cuda_graph: bool = False
    label: str | None = None             # certify.py: display label for analyze.py
    sequential: bool = False             # certify.py --sequential --radii R ...
    radii: list[float] | None = None
    sequential_rule: str = "gs"          # gs: calibrated group-sequential | cs: confidence sequence (anytime-valid)
    futility: str = "projected"          # gs: give up at r when certifying r looks hopeless: none | upper | projected
    futility_level: float = 0.001        # gs: γ of the futility rule (free for validity: it never certifies)
    estimate: bool = False               # sample.py/certify.py: a pilot's projected cost; nothing is written
    time_limit: str | None = None        # with estimate: one task's time limit (SLURM --time) → shards that fit
    out: str | None = None
    given: tuple[str, ...] = ()          # the options set explicitly (refusals of what does not apply)

    def __post_init__(self):
        self.given = tuple(sorted(set(self.given)))
        if self.label is not None and any(not ch.isprintable() for ch in self.label):  # one table cell, one line
            raise CertifyNetError(f"{{label}} must be printable text (no newline, tab or control character), got "
                                  f"{self.label!r}", "label")

    # ---- construction and spelling
    @classmethod
    def names(cls) -> list[str]:
        """The option fields, in `to_argv` order."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "given"]

    @classmethod
    def from_namespace(cls, ns, **overrides) -> SamplingConfig:
        """From a parsed command line (its `given` set, from `cli.parse`, is kept); other attributes are ignored."""
        names = set(cls.names())
        values = {k: v for k, v in vars(ns).items() if k in names}
        values.update(overrides)
        return cls(**values, given=tuple(set(getattr(ns, "given", ())) & names))

    @classmethod
    def from_explicit(cls, values: dict) -> SamplingConfig:
        """The configuration in which exactly `values` are given (the others keep their defaults), as the command
        line `to_argv` spells; the inverse of `explicit`."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise CertifyNetError(f"unknown sampling option(s) {', '.join(unknown)}")
        return cls(**values, given=tuple(values))

    def _explicit(self, name: str, default: SamplingConfig) -> bool:
        value = getattr(self, name)
        if name in SWITCHES:
            return value != getattr(default, name)
        return value is not None and (name in self.given or value != getattr(default, name))

    def explicit(self) -> dict:
        """{option: value} for every option set: given or away from its default (JSON-able)."""
        default = SamplingConfig()
        return {n: getattr(self, n) for n in self.names() if self._explicit(n, default)}

    def to_argv(self) -> list[str]:
        """The command-line options that give this configuration: every explicit option, in field order."""
        argv = []
        for name, value in self.explicit().items():
            if name in SWITCHES:
                argv.append(SWITCHES[name])
            elif name == "radii":
                argv += [flag(name), *map(str, value)]
            else:
                argv += [flag(name), str(value)]
        return argv

    def command(self, script: str) -> str:
        """The equivalent command line, as a sidecar's `command` records it: `scripts/<script>.py <argv>`."""
        return " ".join([f"scripts/{script}.py", *self.to_argv()])

    # ---- what a run costs
    def passes_per_input(self) -> tuple[int, bool]:
        """(forward passes per input, exact?): N0 + N (+ N for Q); ISS: at most pilot + N (+ Q pilot + N)."""
        per_distribution = 2 if self.q_dist != "none" else 1
        if self.iss:
            return (self.iss_n0 + self.N) * per_distribution, False
        return (self.N0 if self.select == "n0" else 0) + self.N * per_distribution, True

    # ---- validation
    def validate(self, mode: str) -> None:
        """Check every option of a `mode` run (sample, certify, predict, attack) before anything is loaded or
        written, and refuse the options given explicitly that do not apply to it."""
        if mode not in MODES:
            raise CertifyNetError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self._check_choices()
        given = set(self.explicit())
        self._check_common(given)
        if mode in WHY_NOT:
            refuse(given, [*NOT_FOR_PREDICT, *(["inputs_per_batch"] if mode == "attack" else [])], WHY_NOT[mode])
            check_sample_sizes(0, self.N)
        else:
            self._check_q(given)
            if self.iss:
                self._check_iss(given)
            else:
                self._check_class_selection(given)
        self._check_image(given)
        self._check_diffusion(given)
        self.check_sequential_and_estimate(mode)
        check_run_sizes(self)  # sizes that can never fit (bounds.py), before anything is loaded

    def diffusion_options(self) -> DiffusionOptions:
        """The diffusion denoiser's options (checked), from this configuration's diffusion fields."""
        return DiffusionOptions.from_namespace(self)

    def _check_diffusion(self, given: set) -> None:
        """The diffusion flags: valid values, and only with a diffusion {denoiser} (a folder, or a weight file with
        an OpenAI UNet's keys). K-step denoising (diffusion_steps > 1) draws its noise ξ from one input's stream,
        so it does not combine with inputs_per_batch > 1, whose shared passes would make rows depend on the
        grouping, nor with cuda_graph, whose capture would draw from the first input's stream (sound either way:
        ξ never depends on δ)."""
        self.diffusion_options()
        used = [n for n in DIFFUSION_FIELDS if n in given]
        if not used:
            return
        if not self.denoiser:
            refuse(given, used, "without a diffusion {denoiser} (a diffusers folder or an OpenAI checkpoint)",
                   "denoiser")
        if os.path.isfile(self.denoiser):
            from certifynet.denoise.diffusion.load import is_diffusion_source  # torch: only for a file
            if not is_diffusion_source(self.denoiser):
                refuse(given, used, f"to {{denoiser}} '{self.denoiser}', which is not a diffusion model", "denoiser")
        if self.diffusion_steps > 1 and self.inputs_per_batch > 1:
            raise CertifyNetError("{diffusion_steps} > 1 does not combine with {inputs_per_batch} > 1 (K-step noise is "
                                  "drawn per input)", "diffusion_steps", "inputs_per_batch")
        if self.diffusion_steps > 1 and self.cuda_graph:   # its capture and probe would draw the first input's ξ
            raise CertifyNetError("{diffusion_steps} > 1 does not combine with {cuda_graph} (K-step noise is drawn "
                                  "afresh per call)", "diffusion_steps", "cuda_graph")

    def _check_choices(self) -> None:
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices and not (value is None and name in ("iss", "dist")):
                raise CertifyNetError(f"{{{name}}} must be one of {', '.join(choices)}, got {value!r}", name)

    def _check_common(self, given: set) -> None:
        if self.model is None:
            raise CertifyNetError("{model} is required", "model")
        if self.sigma is None:
            raise CertifyNetError("{sigma} is required (σ of the smoothing noise)", "sigma")
        check_sigma(self.sigma)
        check_alpha(self.alpha)
        check_seed(self.seed)
        parse_device(self.device)
        check_selection(self.start, self.end, self.skip, self.max)
        if self.batch < 1:
            raise CertifyNetError(f"{{batch}} must be >= 1, got {self.batch}", "batch")
        check_inputs_per_batch(self.inputs_per_batch)
        if self.k is None or self.k < 0:
            raise CertifyNetError(f"{{k}} must be >= 0, got {self.k}", "k")
        if self.k and self.dist == "gaussian" and "dist" in given:
            raise CertifyNetError("{k} > 0 needs {dist} general_gaussian (or leave {dist} out)", "k", "dist")

    def _check_q(self, given: set) -> None:
        """DSRS's Q: σ_Q only for rescaled Q, p_T only for truncated Q."""
        refuse(given, ["q_sigma"] if self.q_dist != "rescaled" else [], "without {q_dist} rescaled", "q_dist")
        refuse(given, ["q_percentile"] if self.q_dist != "truncated" else [], "without {q_dist} truncated", "q_dist")
        if self.q_dist == "rescaled" and self.q_sigma is not None:
            check_sigma(self.q_sigma, "q_sigma")
        if self.q_dist == "truncated":
            parse_percentile(self.q_percentile)

    def _check_iss(self, given: set) -> None:
        """ISS: the pilot of iss_n0 ≤ N draws picks the class; the decline ε is ≥ 0 (< 1 when relative)."""
        refuse(given, ["N0"], "with {iss}: the ISS pilot ({iss_n0} draws) picks the class", "iss", "iss_n0")
        check_sample_sizes(0, self.N)
        if not 1 <= self.iss_n0 <= self.N:
            raise CertifyNetError(f"{{iss_n0}} (the ISS pilot) must be in [1, N={self.N}], got {self.iss_n0}",
                                  "iss_n0")
        d = self.iss_decline
        if not (math.isfinite(d) and d >= 0 and (self.iss == "absolute" or d < 1)):
            below = " and < 1" if self.iss == "relative" else ""
            raise CertifyNetError(f"{{iss_decline}} must be >= 0{below}, got {d}", "iss_decline")
        if self.q_dist == "truncated" and self.q_percentile == "x+":
            raise CertifyNetError("{q_percentile} x+ (re-sample P when every P draw hits) is not available with {iss}",
                                  "q_percentile", "iss")

    def _check_class_selection(self, given: set) -> None:
        """Fixed budget: ĉ_A from N0 ≥ 1 selection draws, or the label (no selection draws)."""
        refuse(given, ["iss_decline", "iss_n0"], "without {iss}", "iss")
        if self.select == "label":
            refuse(given, ["N0"], "with {select} label (the true label is counted; there are no selection draws)",
                   "select")
        check_sample_sizes(self.N0 if self.select == "n0" else 0, self.N, select_draws=self.select == "n0")

    def _check_image(self, given: set) -> None:
        """An image file replaces the dataset: the dataset options are refused with it, its label without it."""
        if self.image:
            refuse(given, ["split", "data_dir"], "with {image} (the image file is the only input)", "image")
            if self.select == "label" and self.image_label < 0:
                raise CertifyNetError("{select} label needs the image's {image_label}", "select", "image_label")
        else:
            refuse(given, ["image_label"], "without {image}", "image")


    def check_sequential_and_estimate(self, mode: str) -> None:
        """The sequential rule's options and {estimate}/{time_limit} (part of `validate`; certify.py --counts, which
        validates against its counts file instead, checks these alone)."""
        given = set(self.explicit())
        self._check_sequential_options(given)
        self._check_estimate(given, mode)

    def _check_sequential_options(self, given: set) -> None:
        """The sequential rule's options apply with {sequential} only; futility with the calibrated rule only."""
        if not self.sequential:
            refuse(given, SEQUENTIAL_OPTIONS, "without {sequential}", "sequential")
        if self.sequential_rule == "cs":
            refuse(given, ["futility", "futility_level"], "with {sequential_rule} cs (the confidence sequence's "
                   "own stops are its futility rule)", "sequential_rule")
        if self.futility == "none":
            refuse(given, ["futility_level"], "with {futility} none", "futility")
        g = self.futility_level
        if not (isinstance(g, (int, float)) and 0.0 < g < 1.0):
            raise CertifyNetError(f"{{futility_level}} must be in (0, 1), got {g}", "futility_level")

    def _check_estimate(self, given: set, mode: str) -> None:
        """{estimate} for sample.py and certify.py (sampling with a model); {time_limit} only with it."""
        if self.estimate and mode not in ("sample", "certify"):
            raise CertifyNetError(f"{{estimate}} is not available to {mode}", "estimate")
        if self.estimate and self.counts:
            raise CertifyNetError("{estimate} projects the cost of sampling: give {model}, not {counts} (certifying "
                                  "a counts file samples nothing)", "estimate", "model", "counts")
        if not self.estimate:
            refuse(given, ["time_limit"], "without {estimate}", "estimate")
        elif self.time_limit is not None:
            parse_time_limit(self.time_limit)


def parse_time_limit(text) -> float:
    """Seconds of a SLURM --time value: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S (e.g. 04:00:00, 1-12:00:00)."""
    bad = CertifyNetError(f"{{time_limit}} must be a SLURM time such as 04:00:00, 90:00 or 1-12:00:00, got "
                          f"{text!r}", "time_limit")
    days, dash, rest = str(text).strip().rpartition("-")
    parts = rest.split(":")
    if dash and not days:
        raise bad
    try:
        d = int(days) if days else 0
        nums = [int(v) for v in parts]
    except ValueError:
        raise bad from None
    if not 1 <= len(nums) <= 3 or d < 0 or any(v < 0 for v in nums):
        raise bad
    if days:                  # D-H, D-H:M, D-H:M:S
        h, m, s = (nums + [0, 0])[:3]
    elif len(nums) == 3:      # H:M:S
        h, m, s = nums
    else:                     # M, M:S
        h, m, s = 0, nums[0], (nums + [0])[1]
    seconds = float(((d * 24 + h) * 60 + m) * 60 + s)
    if seconds <= 0:
        raise bad
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as SLURM's D-HH:MM:SS (HH:MM:SS under a day), rounded up to the second."""
    total = math.ceil(max(0.0, seconds))
    d, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}-" if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def parse_percentile(text) -> str | float:
    """Truncated Q's p_T: the heuristic 'x' or 'x+', or a number in (0, 1]."""
    if text in ("x", "x+"):
        return text
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise CertifyNetError(f"{{q_percentile}} must be 'x', 'x+' or a number in (0, 1], got '{text}'",
                              "q_percentile") from None
    if not 0.0 < v <= 1.0:
        raise CertifyNetError(f"{{q_percentile}} must be in (0, 1], got {text}", "q_percentile")
    return v


def check_inputs_per_batch(k) -> int:
    """Inputs whose selection / pilot draws share forward passes: K ≥ 1."""
    if int(k) < 1:
        raise CertifyNetError(f"{{inputs_per_batch}} must be >= 1, got {k}", "inputs_per_batch")
    return int(k)


def check_run_args(args, mode: str) -> None:
    """`SamplingConfig.validate` for a parsed namespace (kept for callers of the former pipeline module)."""
    SamplingConfig.from_namespace(args).validate(mode)
