"""Sampler: no side effects on the caller's model, cross-input batching (counts_many, --inputs-per-batch),
the CUDA-graph path's logic (with a CPU stand-in for the capture), and the CUDA-marked device checks."""
import copy
import json
import logging
import os

import numpy as np
import pytest
import torch
from scipy import stats

from certifynet.certify.dsrs import truncation_beta
from certifynet.cli import parse
from certifynet.cli import sample as sample_cli
from certifynet.cli.base import per_input_parser
from certifynet.errors import CertifyNetError
from certifynet.models import get_architecture, save_checkpoint
from certifynet.noise import GaussianNoise, GeneralizedGaussianNoise, make_noise, sigma_prime
from certifynet.records import read_rows
from certifynet.sampling import STREAM_P, STREAM_SELECT, InputSampler, Sampler, SamplingConfig, Smooth, input_generator

from helpers import ExactLinear, LinearBinary, cuda_test

MNIST = (1, 28, 28)


def lenet(seed=0):
    torch.manual_seed(seed)
    return get_architecture("lenet", "mnist5k")


def model_facts(m):
    """What the caller can observe of a module: per tensor device, dtype, strides, values; modes."""
    tensors = {n: (t.device, t.dtype, t.stride(), t.detach().clone()) for n, t in
               list(m.named_parameters()) + list(m.named_buffers())}
    return tensors, [mod.training for mod in m.modules()], [id(p) for p in m.parameters()]


def assert_same_facts(before, after):
    (tb, mb, ib), (ta, ma, ia) = before, after
    assert mb == ma and ib == ia and tb.keys() == ta.keys()
    for n in tb:
        assert tb[n][:3] == ta[n][:3], n
        assert torch.equal(tb[n][3], ta[n][3]), n


# ---------------------------------------------------------------- no side effects on the caller's model

@pytest.mark.parametrize("optimize", [True, False])
def test_smooth_leaves_the_callers_model_as_it_was(optimize):
    """Smooth(m).certify/.predict convert a private copy (channels_last, eval); m keeps strides, device, mode."""
    m = lenet()  # train mode, NCHW, CPU
    conv = m[1].conv2.weight
    assert m.training and conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    before = model_facts(m)
    sm = Smooth(m, 10, 0.25, optimize=optimize)
    x = torch.rand(MNIST)
    pred, _ = sm.certify(x, n0=10, n=120, alpha=0.001, batch=50)  # full batches (trace) and a tail
    sm.predict(x, n=60, alpha=0.001, batch=50)
    assert_same_facts(before, model_facts(m))
    assert sm._sampler.model is not m and not sm._sampler.model.training
    assert sm._sampler.model[1].conv2.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_ready_model_is_used_as_is_and_updates_are_seen():
    """A module already in eval mode, on the device and channels_last is not copied; when the caller then
    changes its weights in place, the Sampler (and its trace) follows."""
    m = lenet().eval().to(memory_format=torch.channels_last)
    s = Sampler(m, 10, batch=40)
    assert s.model is m
    x, noise = torch.rand(MNIST), GaussianNoise(0.25)
    s.counts(x, noise, 80)  # builds the trace
    with torch.no_grad():  # make class 7 win everywhere
        m[1].fc2.weight.zero_()
        m[1].fc2.bias.copy_(torch.arange(10) == 7)
    assert s.counts(x, noise, 80)[7] == 80
    m.train()  # a mode change is seen too: evaluated on an eval-mode copy, m stays in train mode
    assert s.counts(x, noise, 80)[7] == 80 and m.training and s.model is not m


def _cli_args(extra=()):
    """The run configuration that sample.py's options give."""
    return SamplingConfig.from_namespace(parse(per_input_parser("t", "", ""), [
        "--model", "unused", "--sigma", "0.25", "--N0", "20", "--N", "100", "--batch", "40", *extra]))


def test_cli_sampler_leaves_the_model_as_it_was():
    m = lenet()
    before = model_facts(m)
    s = InputSampler(m, 10, 784, _cli_args(), torch.device("cpu"))
    s.sample(0, torch.rand(MNIST), 3)
    assert_same_facts(before, model_facts(m))


# ---------------------------------------------------------------- Smooth: one noise, the CLI's radius

def test_smooth_refuses_a_sigma_that_disagrees_with_its_noise():
    """Smooth(sigma=1.0, noise=N(0, 0.25²)) used to sample at 0.25 and certify at 1.0 (a radius 4× too large)."""
    m = LinearBinary(784, seed=3)
    with pytest.raises(CertifyNetError) as e:
        Smooth(m, 2, sigma=1.0, noise=GaussianNoise(0.25))
    assert str(e.value).startswith("sigma=1.0 disagrees with the σ=0.25 of noise")
    with pytest.raises(CertifyNetError, match="sigma=0.3 disagrees"):
        Smooth(m, 2, sigma=0.3, noise=GeneralizedGaussianNoise(0.25, 380, 784))
    with pytest.raises(CertifyNetError, match="noise must be a GaussianNoise or GeneralizedGaussianNoise"):
        Smooth(m, 2, noise=make_noise("truncated", 0.25, 784, 0, percentile=0.5, beta=truncation_beta(0.5, 784, 0)))
    with pytest.raises(CertifyNetError, match="sigma is required"):
        Smooth(m, 2)
    assert Smooth(m, 2, noise=GaussianNoise(0.25)).sigma == 0.25        # σ from the noise when not given
    assert Smooth(m, 2, 0.25, GaussianNoise(0.25)).sigma == 0.25        # or given, and equal to it


def _recorded_counts(monkeypatch):
    """Every count vector a Sampler returns from `counts`, in order (what Smooth's procedures saw)."""
    seen, real = [], Sampler.counts

    def counts(self, *args, **kw):
        out = real(self, *args, **kw)
        seen.append(out.cpu().numpy().copy())
        return out
    monkeypatch.setattr(Sampler, "counts", counts)
    return seen


@pytest.mark.parametrize("noise", [GaussianNoise(0.25), GeneralizedGaussianNoise(0.25, 380, 784)],
                         ids=["gauss", "k380"])
def test_smooth_radius_equals_certify_py_on_the_same_counts(noise, monkeypatch):
    """Smooth.certify's radius is certify.py's (`certify_row` on the same counts, σ/d/k of the same noise). For the
    generalized Gaussian (k=380) it is the generalized NP radius, not σΦ⁻¹(p̲_A) (which is larger: the control)."""
    from certifynet.certify import cp_lower, np_radius
    from certifynet.certify.from_counts import certify_row
    m = LinearBinary(784, seed=3)
    x = m.point_at(0.2, MNIST)
    seen = _recorded_counts(monkeypatch)
    pred, radius = Smooth(m, 2, noise=noise).certify(x, n0=50, n=2000, alpha=0.001, batch=500)
    selection, estimation = seen
    assert pred == int(selection.argmax()) == 1 and 1000 < estimation[1] < 2000   # a real p̲_A, neither ½ nor 1
    row = {"idx": 0, "label": 1, "pred": pred, "n0": 50, "n": 2000, "count": int(estimation[pred])}
    meta = {"sigma": 0.25, "d": 784, "k": getattr(noise, "k", 0)}
    assert radius == certify_row(row, meta, "np", 0.001)["radius"] > 0
    gaussian = np_radius(cp_lower(int(estimation[pred]), 2000, 0.001), 0.25)
    if meta["k"]:
        assert gaussian > 1.01 * radius   # the Gaussian formula would over-certify under this noise
    else:
        assert radius == gaussian


def test_smooth_predict_is_predict_from_counts_and_messages_name_its_arguments(monkeypatch):
    from certifynet.certify import predict_from_counts
    m = LinearBinary(784, seed=3)
    sm = Smooth(m, 2, 0.25)
    seen = _recorded_counts(monkeypatch)
    for dist in (0.01, 0.3):     # near the boundary (abstains) and away from it
        assert sm.predict(m.point_at(dist, MNIST), n=200, alpha=0.001, batch=100) == \
            predict_from_counts(seen[-1], 0.001)[0]
    x = m.point_at(0.2, MNIST)
    for kw, text in ((dict(alpha=2), "alpha must be in (0, 1), got 2"), (dict(n0=0), "n0 must be >= 1"),
                     (dict(n=0), "n must be > 0"), (dict(batch=0), "batch must be >= 1, got 0")):
        args = {"n0": 10, "n": 20, "alpha": 0.001, "batch": 10, **kw}
        with pytest.raises(CertifyNetError) as e:
            sm.certify(x, **args)
        assert str(e.value).startswith(text) and "--" not in str(e.value), str(e.value)


# ---------------------------------------------------------------- cross-input batching

class Recorder(torch.nn.Module):
    """Wraps a model and keeps a copy of every batch it is given and of its output (to compare the noisy inputs
    bit for bit, and to recount what the model returned)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen, self.out = model, [], []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        y = self.model(x)
        self.out.append(y.detach().clone())
        return y


def _packed_rows(seen, ns, batch):
    """Split counts_many's recorded batches into each input's noisy rows, in draw order: full batches input
    by input, then the tails packed into shared batches of at most `batch` rows."""
    rows, it = [[] for _ in ns], iter(seen)
    for i, n in enumerate(ns):
        rows[i] += [next(it) for _ in range(n // batch)]
    cur, used = None, batch
    for i, n in enumerate(ns):
        size = n % batch
        if size:
            if used + size > batch:
                cur, used = next(it), 0
            rows[i].append(cur[used:used + size])
            used += size
    assert next(it, None) is None
    return [torch.cat(r) if r else torch.empty(0) for r in rows]


NS = [100, 37, 250, 0, 130, 60, 100, 99]


@pytest.mark.parametrize("noise", [GaussianNoise(0.5), GeneralizedGaussianNoise(0.5, 380, 784)], ids=["gauss", "gg"])
def test_counts_many_draws_each_inputs_own_noise(noise):
    """counts_many gives every input bit for bit the noisy rows `counts` gives it alone (own generator, same
    chunks), whatever the other inputs are; full batches and packed tails both."""
    batch = 120
    xs = [torch.rand(MNIST, generator=torch.Generator().manual_seed(i)) for i in range(len(NS))]
    rec = Recorder(lenet()).eval()  # ready as it is: not copied, so rec.seen is what the Sampler ran
    s = Sampler(rec, 10, batch=batch, optimize=False, channels_last=False)
    alone = []
    for i, (x, n) in enumerate(zip(xs, NS)):
        rec.seen = []
        s.counts(x, noise, n, input_generator(0, i, STREAM_SELECT, "cpu"))
        alone.append(torch.cat(rec.seen) if rec.seen else torch.empty(0))
    rec.seen = []
    s.counts_many(xs, noise, NS, [input_generator(0, i, STREAM_SELECT, "cpu") for i in range(len(NS))])
    assert len(rec.seen) == sum(n // batch for n in NS) + 4  # the 7 tails shared 4 forward passes
    together = _packed_rows(rec.seen, NS, batch)
    for i, n in enumerate(NS):
        assert alone[i].shape[0] == together[i].shape[0] == n and torch.equal(alone[i], together[i]), i


def _alone_and_together(s, xs, noise, gens):
    """Counts [len(xs), K] of each input alone (`counts`) and of all of them at once (`counts_many`)."""
    alone = torch.stack([s.counts(x, noise, n, g) for x, n, g in zip(xs, NS, gens())])
    return alone, s.counts_many(xs, noise, NS, gens())


@pytest.mark.parametrize("optimize", [False, True], ids=["eager", "traced"])
def test_counts_many_gives_identical_counts(optimize):
    """Identical counts with and without cross-input batching, for a model whose rows are independent of
    their batch by construction (helpers.ExactLinear: integer arithmetic in float64, exact in any order).

    Why this is exact on any CPU: the noisy rows are identical bit for bit (test above), full batches run the
    same function (trace or eager) on the same rows both ways, and a packed tail row's logits are exact whichever
    rows share its forward pass. So equal counts test the bookkeeping (which rows are whose, tails packed and
    unpacked), not a CPU's float32 kernels; the real LeNet is checked with a tolerance below.
    """
    model, batch = ExactLinear(784, seed=3).eval(), 120
    xs = [torch.rand(MNIST, generator=torch.Generator().manual_seed(10 + i)) for i in range(len(NS))]
    noise = GaussianNoise(0.5)
    s = Sampler(model, 10, batch=batch, optimize=optimize)
    gens = lambda: [input_generator(4, i, STREAM_SELECT, "cpu") for i in range(len(NS))]  # noqa: E731
    alone, together = _alone_and_together(s, xs, noise, gens)
    assert torch.equal(alone, together)
    assert alone.sum(1).tolist() == NS and (alone > 0).sum() > len(NS)  # several classes seen: a real test
    # control: the same draws dealt to the wrong inputs give other counts (the comparison can fail)
    swapped = s.counts_many(xs, noise, NS, gens()[::-1])
    assert not torch.equal(swapped, together)


def _bincounts(logits, ns):
    """Per-input class counts of the argmax of `logits`, whose rows are the inputs' rows in order (sizes ns)."""
    parts = torch.split(logits.argmax(1), ns)
    return torch.stack([torch.bincount(p, minlength=10) for p in parts])


def _assert_batching_moves_only_ties(model, device, batch=120):
    """The float32 `model` on `device`, each input alone vs all at once (counts_many): see the test below."""
    rec = Recorder(model).eval()   # ready as it is (eval, on the device, NCHW): the Sampler runs rec itself
    s = Sampler(rec, 10, batch=batch, device=device, optimize=False, channels_last=False)
    xs = [torch.rand(MNIST, generator=torch.Generator().manual_seed(10 + i)) for i in range(len(NS))]
    noise = GaussianNoise(0.5)
    gens = lambda: [input_generator(4, i, STREAM_SELECT, device) for i in range(len(NS))]  # noqa: E731
    rec.seen, rec.out = [], []
    alone = torch.stack([s.counts(x, noise, n, g) for x, n, g in zip(xs, NS, gens())]).cpu()
    rows, out_alone = torch.cat(rec.seen).cpu(), torch.cat(rec.out).cpu()
    rec.seen, rec.out = [], []
    together = s.counts_many(xs, noise, NS, gens()).cpu()
    assert torch.equal(torch.cat(_packed_rows(rec.seen, NS, batch)).cpu(), rows)  # the same noisy rows
    out_together = torch.cat(_packed_rows(rec.out, NS, batch)).cpu()
    assert torch.equal(alone, _bincounts(out_alone, NS))            # exact bookkeeping, whatever the kernels
    assert torch.equal(together, _bincounts(out_together, NS))
    with torch.inference_mode():
        exact = copy.deepcopy(model).cpu().double()(rows.double())
    dev = max(float((out.double() - exact).abs().max()) for out in (out_alone, out_together))
    top2 = exact.topk(2, 1).values
    ties = int((top2[:, 0] - top2[:, 1] <= 2 * dev).sum())
    assert dev < 1e-4 and ties < 0.01 * len(rows), (dev, ties)     # rounding only, and a small allowance
    assert int((alone - together).abs().sum()) <= 2 * ties, (alone - together, ties)
    swapped = s.counts_many(xs, noise, NS, gens()[::-1]).cpu()        # control: the comparison can fail
    assert int((swapped - together).abs().sum()) > 2 * ties


def test_counts_many_with_lenet_differs_only_at_float_ties():
    """The real LeNet (float32, eager) with and without cross-input batching: the counts are exactly the
    argmax counts of the logits each run computed, and the two runs differ only on rows that are ties within
    float32 rounding.

    Tolerance, argued: a packed tail row goes through LeNet inside another batch than when its input runs
    alone, and a CPU may pick other kernels (another summation order) for another batch size, so its float32
    logits may differ in the last bits; bit-for-bit equality would test that CPU, not this code. Let `dev` be
    the largest deviation, measured here, of any float32 logit either run computed from LeNet's exact (float64)
    logit of the same row (here ~1e-7). A row whose exact top-two gap exceeds 2·dev has the exact argmax in
    both runs; each other row can move one count from one class to another. So the L1 distance between the two
    count tables is at most 2·#{rows with gap ≤ 2·dev}. Controls: dev is at float32 rounding level, the
    allowance stays under 1 % of the rows, and the same draws dealt to the wrong inputs exceed it.
    """
    _assert_batching_moves_only_ties(lenet(3).eval(), "cpu")


def test_counts_many_checks_its_arguments():
    s = Sampler(lenet().eval(), 10, batch=50)
    with pytest.raises(Exception, match="same shape"):
        s.counts_many([torch.rand(MNIST), torch.rand(1, 28, 27)], GaussianNoise(0.5), [10, 10])
    with pytest.raises(Exception, match="2 inputs but"):
        s.counts_many([torch.rand(MNIST)] * 2, GaussianNoise(0.5), [10])
    assert s.counts_many([], GaussianNoise(0.5), []).shape == (0, 10)


@pytest.mark.parametrize("extra", [
    [],
    ["--iss", "absolute", "--iss-n0", "30"],
    ["--iss", "absolute", "--iss-n0", "30", "--q-dist", "truncated", "--q-percentile", "x", "--k", "380"],
], ids=["np", "iss-np", "iss-dsrs"])
def test_prefetch_gives_the_rows_sample_gives_alone(extra):
    """InputSampler.prefetch (the --inputs-per-batch path): identical rows to one input at a time (a model
    whose rows are independent of their batch by construction, see test_counts_many_gives_identical_counts)."""
    model = ExactLinear(784, seed=5).eval()
    items = [(i, torch.rand(MNIST, generator=torch.Generator().manual_seed(i)), i % 10) for i in range(7)]
    alone = InputSampler(model, 10, 784, _cli_args(extra), torch.device("cpu"))
    grouped = InputSampler(model, 10, 784, _cli_args([*extra, "--inputs-per-batch", "3"]), torch.device("cpu"))
    want = [alone.sample(*it) for it in items]
    got = []
    for k in range(0, len(items), 3):
        group = items[k:k + 3]
        grouped.prefetch(group)
        assert len(grouped._prefetched) == (len(group) * (2 if "--q-dist" in extra else 1) if len(group) > 1 else 0)
        got += [grouped.sample(*it) for it in items[k:k + 3]]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(got) == strip(want) and not grouped._prefetched


def test_sample_cli_inputs_per_batch(tmp_path, monkeypatch):
    """sample.py --inputs-per-batch 4 writes the same counts file as without it (and refuses K < 1). The
    sampler gets a model whose rows are independent of their batch by construction (helpers.ExactLinear) in
    place of the loaded LeNet, so that the comparison does not rest on this CPU's float32 kernels."""
    groups = []
    real, real_init = InputSampler.prefetch, InputSampler.__init__
    monkeypatch.setattr(InputSampler, "prefetch", lambda self, items: groups.append(len(items)) or real(self, items))
    exact = lambda self, model, *a, **k: real_init(self, ExactLinear(784), *a, **k)  # noqa: E731
    monkeypatch.setattr(InputSampler, "__init__", exact)
    path = str(tmp_path / "lenet.pth")
    save_checkpoint(path, lenet(), arch="lenet", dataset="mnist5k", num_classes=10, sigma=0.25)
    common = ["--model", path, "--sigma", "0.25", "--N0", "25", "--N", "100", "--batch", "50", "--max", "6"]
    outs = []
    for k in ("1", "4"):
        out = str(tmp_path / f"c{k}.csv")
        assert sample_cli.main([*common, "--inputs-per-batch", k, "--out", out]) == 0
        outs.append([{c: v for c, v in r.items() if c not in ("time", "check")} for r in read_rows(out, sep=",")[1]])
    assert outs[0] == outs[1] and len(outs[0]) == 6 and groups == [4, 2]
    assert sample_cli.main([*common, "--inputs-per-batch", "0", "--out", str(tmp_path / "bad.csv")]) == 2
    assert not os.path.exists(tmp_path / "bad.csv")
    assert "inputs_per_batch" not in json.load(open(str(tmp_path / "c4.csv") + ".meta.json"))  # same run as K=1


# ---------------------------------------------------------------- the CUDA-graph path, on the CPU

class FakeCapture:
    """CPU stand-in for capture_cuda_graph: 'replay' runs the body again (what a graph replays)."""

    def __init__(self, fail=False, corrupt=False):
        self.calls, self.fail, self.corrupt = 0, fail, corrupt

    def __call__(self, body):
        self.calls += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        return (lambda: body() * 0 + 1) if self.corrupt else body


def _graphed_sampler(model, capture, batch=40):
    s = Sampler(model, 10, batch=batch, optimize=False)
    s.cuda_graph, s.graph_capture = True, capture  # what a CUDA device would set
    return s


def test_cuda_graph_flag_is_a_no_op_on_the_cpu(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="certifynet"):
        s = Sampler(lenet().eval(), 10, batch=40, cuda_graph=True)
    assert not s.cuda_graph and "cuda_graph captures CUDA kernels; on cpu it has no effect" in caplog.text
    assert capsys.readouterr().err == ""  # a note in the log, never printed by the library


def test_graph_path_gives_the_eager_counts_and_captures_once_per_shape():
    model = lenet().eval()
    eager = Sampler(model, 10, batch=40, optimize=False)
    capture = FakeCapture()
    s = _graphed_sampler(model, capture)
    x, noise = torch.rand(MNIST), GaussianNoise(0.5)
    for i, n in enumerate((40, 130, 7)):
        want = eager.counts(x, noise, n, input_generator(0, i, STREAM_P, "cpu"))
        assert torch.equal(s.counts(x, noise, n, input_generator(0, i, STREAM_P, "cpu")), want)
    assert capture.calls == 1 and s._graphs[MNIST] is not None
    # counts stay on the graph's device buffer between inputs: nothing leaks from one input to the next
    assert int(s._graphs[MNIST].counts.sum()) == 0
    with torch.no_grad():
        model[1].fc2.bias.add_(1.0)  # the caller changes the model: the graph is captured again
    s.counts(x, noise, 80)
    assert capture.calls == 2


@pytest.mark.parametrize("capture, message", [(FakeCapture(fail=True), "capture failed"),
                                              (FakeCapture(corrupt=True), "differ from the eager")])
def test_graph_path_falls_back_to_eager(capture, message, caplog):
    model = lenet().eval()
    s = _graphed_sampler(model, capture)
    x, noise = torch.rand(MNIST), GaussianNoise(0.5)
    want = Sampler(model, 10, batch=40, optimize=False).counts(x, noise, 120, input_generator(0, 0, 1, "cpu"))
    with caplog.at_level(logging.INFO, logger="certifynet"):
        assert torch.equal(s.counts(x, noise, 120, input_generator(0, 0, 1, "cpu")), want)
    assert s._graphs[MNIST] is None and message in caplog.text


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

def _homogeneous(a, b):
    """Chi-square test that two count vectors come from one multinomial (classes seen in either)."""
    keep = (a + b) > 0
    return stats.chi2_contingency(np.stack([a[keep], b[keep]]))[1]


@cuda_test
def test_cuda_counts_agree_in_distribution_with_cpu():
    """Same model and input: CUDA and CPU counts (different RNGs) are one multinomial; σ × 1.3 is rejected."""
    model, x, n = lenet(1).eval(), torch.rand(MNIST, generator=torch.Generator().manual_seed(2)), 200_000
    cpu = Sampler(model, 10, batch=2000, device="cpu").counts_np(x, GaussianNoise(0.5), n,
                                                                 input_generator(0, 0, 1, "cpu"))
    dev = Sampler(model, 10, batch=2000, device="cuda")
    gpu = dev.counts_np(x, GaussianNoise(0.5), n, input_generator(0, 0, 1, "cuda"))
    assert (cpu > 0).sum() >= 3 and _homogeneous(cpu, gpu) > 1e-3, (cpu, gpu)
    broken = dev.counts_np(x, GaussianNoise(0.65), n, input_generator(0, 0, 1, "cuda"))
    assert _homogeneous(cpu, broken) < 1e-6, (cpu, broken)


def _noisy_agreement(model, xs, sigma, draws, batch=1000):
    """Fraction of noisy inputs x + δ on which fp32 and bf16-autocast argmaxes agree (CUDA)."""
    g = torch.Generator("cuda").manual_seed(0)
    agree = total = 0
    with torch.inference_mode():
        for _ in range(draws):
            for start in range(0, len(xs), batch):
                x = xs[start:start + batch]
                noisy = x + sigma * torch.randn(x.shape, device="cuda", generator=g)
                fp32 = model(noisy).argmax(1)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    bf16 = model(noisy).argmax(1)
                agree += int((fp32 == bf16).sum())
                total += len(x)
    return agree / total


@cuda_test
def test_bf16_agrees_with_fp32_quickstart_lenet(tmp_path):
    """LeNet trained as in the quickstart (Gaussian augmentation σ=0.25 on mnist5k; 1 epoch at lr 0.05, the
    recipe of test_training's short run): bf16 and fp32 agree on ≥ 99.5% of 5 × 1,000 noisy test digits."""
    from certifynet.data import get_dataset
    from certifynet.training import loop
    cfg = loop.TrainConfig(dataset="mnist5k", arch="lenet", sigma=0.25, lr=0.05, epochs=1, batch=64, workers=0,
                           device="cuda", outdir=str(tmp_path / "run"), progress=False)
    summary = loop.train(cfg)
    assert summary["last"]["test_acc_noisy"] > 0.8
    from certifynet.models import load_checkpoint
    model = load_checkpoint(str(tmp_path / "run" / "checkpoint.pth")).model.cuda().eval()
    xs = get_dataset("mnist5k", "test").tensors[0].cuda()
    assert _noisy_agreement(model, xs, 0.25, draws=5) >= 0.995


@cuda_test
def test_bf16_agrees_with_fp32_resnet110_cifar_shapes():
    """ResNet-110 at CIFAR-10 shapes, trained for 150 steps on a synthetic 10-class task (class templates +
    N(0, 0.25²) noise; no CIFAR data on the device): bf16 and fp32 agree on ≥ 99.5% of noisy inputs."""
    torch.manual_seed(0)
    model = get_architecture("cifar_resnet110", "cifar10").cuda().to(memory_format=torch.channels_last)
    templates = torch.rand(10, 3, 32, 32, device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator("cuda").manual_seed(1)
    model.train()
    for _ in range(150):
        y = torch.randint(0, 10, (128,), device="cuda", generator=g)
        x = (templates[y] + 0.25 * torch.randn(128, 3, 32, 32, device="cuda", generator=g)).clamp(0, 1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x + 0.25 * torch.randn_like(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    y = torch.arange(2000, device="cuda") % 10
    xs = (templates[y] + 0.25 * torch.randn(2000, 3, 32, 32, device="cuda", generator=g)).clamp(0, 1)
    with torch.inference_mode():
        acc = float((model(xs + 0.25 * torch.randn_like(xs)).argmax(1) == y).float().mean())
    assert acc > 0.5, acc  # it learned something: the margins are a trained network's
    assert _noisy_agreement(model, xs, 0.25, draws=3) >= 0.995


@cuda_test
@pytest.mark.parametrize("k", [380, 0])
def test_truncated_q_law_on_cuda(k):
    """DSRS truncated Q drawn on CUDA: inside the ball, and t ~ Gamma(d/2−k) | t ≤ β (KS test)."""
    d, sigma, p_t = 784, 0.5, 0.6
    beta = truncation_beta(p_t, d, k)
    q = make_noise("truncated", sigma, d, k, percentile=p_t, beta=beta)
    delta = q.sample_(torch.empty(5000, *MNIST, device="cuda"), torch.Generator("cuda").manual_seed(0))
    t = (delta.flatten(1).double().square().sum(1) / (2 * sigma_prime(sigma, d, k) ** 2)).cpu().numpy()
    assert t.max() <= beta * (1 + 1e-6)
    g = stats.gamma(d / 2 - k)
    assert stats.kstest(t, lambda v: np.minimum(g.cdf(v) / p_t, 1.0)).pvalue > 1e-3


@cuda_test
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_cuda_graph_gives_the_eager_counts(amp):
    """--cuda-graph on CUDA: the graph is captured and its counts equal the eager path's (same noise, same
    kernels), for LeNet and ResNet-20, over full batches and a tail."""
    for arch, ds, shape in (("lenet", "mnist5k", MNIST), ("cifar_resnet20", "cifar10", (3, 32, 32))):
        torch.manual_seed(0)
        model = get_architecture(arch, ds).eval()
        x = torch.rand(shape)
        eager = Sampler(model, 10, batch=256, device="cuda", amp=amp)
        graphed = Sampler(model, 10, batch=256, device="cuda", amp=amp, cuda_graph=True)
        for i, n in enumerate((256, 1000)):
            want = eager.counts_np(x, GaussianNoise(0.25), n, input_generator(0, i, 1, "cuda"))
            got = graphed.counts_np(x, GaussianNoise(0.25), n, input_generator(0, i, 1, "cuda"))
            assert np.array_equal(got, want), (arch, n)
        assert graphed._graphs[shape] is not None, arch


@cuda_test
def test_cuda_loop_does_not_synchronize_per_batch():
    """After warm-up, a multi-batch counts_many issues no host-device synchronisation until counts are read
    (torch.cuda.set_sync_debug_mode('error') raises on any synchronising call)."""
    s = Sampler(lenet().eval(), 10, batch=128, device="cuda", amp=True)
    xs = [torch.rand(MNIST) for _ in range(4)]
    s.counts_many(xs, GaussianNoise(0.25), [300] * 4)  # warm-up: allocations, pinned buffer
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = s.counts_many(xs, GaussianNoise(0.25), [300] * 4,
                            [input_generator(0, i, 1, "cuda") for i in range(4)])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.sum(1).tolist() == [300] * 4


@cuda_test
def test_cuda_counts_many_and_no_side_effects():
    """On CUDA: counts_many gives the counts of `counts` for a model whose rows are independent of their batch
    by construction, and with LeNet (fp32, TF32 off) differs from them only at float ties (the bound argued in
    test_counts_many_with_lenet_differs_only_at_float_ties); the caller's CPU model stays on the CPU, in train
    mode, NCHW."""
    s = Sampler(ExactLinear(784, seed=3), 10, batch=120, device="cuda")
    xs = [torch.rand(MNIST, generator=torch.Generator().manual_seed(i)) for i in range(len(NS))]
    gens = lambda: [input_generator(0, i, 0, "cuda") for i in range(len(NS))]  # noqa: E731
    alone = torch.stack([s.counts(x, GaussianNoise(0.5), n, g) for x, n, g in zip(xs, NS, gens())])
    assert torch.equal(alone, s.counts_many(xs, GaussianNoise(0.5), NS, gens()))
    flag = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False   # fp32 convolutions: logits within float32 rounding of float64
    try:
        _assert_batching_moves_only_ties(lenet(3).eval().cuda(), "cuda")
    finally:
        torch.backends.cudnn.allow_tf32 = flag
    m = lenet()
    before = model_facts(m)
    Sampler(m, 10, batch=120, device="cuda").counts_many(xs, GaussianNoise(0.5), NS, gens())
    Smooth(m, 10, 0.25, device="cuda").certify(xs[0], n0=10, n=200, alpha=0.001, batch=64)
    assert_same_facts(before, model_facts(m))
