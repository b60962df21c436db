"""The device check (benchmarks/gpu_check.sh): its CPU mode end to end, its robustness, and the CUDA-marked
device tests it runs on a GPU (training steps, torchrun with NCCL, DRUNet + classifier)."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from certifynet.models import get_architecture
from certifynet.noise import GaussianNoise, GeneralizedGaussianNoise
from certifynet.sampling import Sampler, input_generator
from certifynet.training.loop import LossSpec

from helpers import cuda_test, load_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_check():
    return load_benchmark("gpu_check")


@pytest.mark.e2e
def test_gpu_check_cpu_mode(tmp_path):
    """`gpu_check.sh --cpu --models lenet`: every piece recorded in one JSON, the CUDA tests as skipped with
    their reason, the LeNet benchmark with passes/s, the ratio to the Cohen-style loop and the fraction of
    the fp32 matmul peak, and the printed table.

    Nothing here depends on this machine's speed or load: the budget and stretch are far above what the pieces
    need (the budget logic itself is tested with no clock, below), no duration is asserted, and whether the
    LeNet selection pass gave identical counts one input at a time and K per batch is a measurement of this
    CPU's kernels (tests/test_sampler.py tests the property where it lives), so only its presence is checked."""
    out = str(tmp_path / "gpu_check.json")
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--cpu", "--models", "lenet",
                        "--budget", "3000", "--stretch", "20", "--out", out], capture_output=True, text=True,
                       timeout=3600, cwd=ROOT, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(out))
    pieces = res["pieces"]
    assert res["mode"] == "cpu" and list(pieces) == ["environment", "cuda_tests", "bench LeNet MNIST"]
    assert pieces["environment"]["status"] == "ok" and torch.__version__.startswith(pieces["environment"]["torch"])
    tests = pieces["cuda_tests"]
    assert tests["status"] == "ok" and tests["counts"]["skipped"] >= 10 and not tests["counts"]["passed"]
    assert all("CUDA" in t["message"] for t in tests["tests"]), tests["tests"][:2]
    lenet = pieces["bench LeNet MNIST"]
    assert lenet["status"] == "ok", lenet
    b = lenet["result"]
    assert b["flops_per_pass"] == 4_586_000 and b["peak_flops"]["fp32"] > 1e8 and b["device"] == "cpu"
    for name in ("reference", "certifynet fp32"):
        v = b["rates"][name]
        assert v["passes_per_s"] > 0 and v["fraction_of_peak"] > 0 and v["peak"] == "fp32"  # no bound: load
        assert v["fraction_of_peak"] == pytest.approx(b["flops_per_pass"] * v["passes_per_s"] / b["peak_flops"]["fp32"])
    assert isinstance(b["selection"]["identical_counts"], bool) and b["selection"]["inputs_per_batch"] == 4
    assert "| LeNet MNIST | certifynet fp32 |" in r.stdout and "of fp32 matmul peak" in r.stdout
    assert set(res["targets"]) and all(v["met"] is None for v in res["targets"].values())  # GPU-only targets


@pytest.mark.e2e
def test_gpu_check_cpu_mode_diffusion_pipelines(tmp_path):
    """`gpu_check.sh --cpu` runs the two diffusion denoised smoothing pipelines of the GPU plan (a ddpm-cifar10-32-
    shaped UNet + ResNet-110, and + ViT-B/16 at 224) through bench_sampler.py --composed, at toy width: passes/s,
    the ratio to the Cohen-style loop and the fraction of the fp32 peak are recorded, and the GPU-only throughput
    target is left unmeasured. No speed is asserted (load)."""
    out = str(tmp_path / "gpu_check.json")
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--cpu", "--pieces", "bench",
                        "--models", "ddpm-cifar10+resnet110,ddpm-cifar10+vit224", "--budget", "3000", "--stretch", "40",
                        "--out", out], capture_output=True, text=True, timeout=3600, cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stderr[-2000:]
    pieces = json.load(open(out))["pieces"]
    assert list(pieces) == ["bench DDPM-CIFAR10 + ResNet-110", "bench DDPM-CIFAR10 + ViT-B/16 224"]
    for name, piece in pieces.items():
        assert piece["status"] == "ok", (name, piece)
        b = piece["result"]
        assert b["arch"].endswith("(tiny)") and b["shape"] == [3, 32, 32] and b["flops_per_pass"] > 0
        for v in b["rates"].values():
            assert v["passes_per_s"] > 0 and v["fraction_of_peak"] > 0
    vit = pieces["bench DDPM-CIFAR10 + ViT-B/16 224"]["result"]["flops_per_pass"]
    assert vit > pieces["bench DDPM-CIFAR10 + ResNet-110"]["result"]["flops_per_pass"]   # the 224×224 ViT
    assert "| DDPM-CIFAR10 + ViT-B/16 224 | certifynet fp32 |" in r.stdout


def test_composed_models_full_size_flops():
    """The full-size pipelines' FLOPs per pass (convolutions and linear layers; attention products excluded), as
    docs/diffusion.md quotes them: the ddpm-cifar10-32-shaped UNet 12.1 G, + ResNet-110 0.5 G, + ViT-B/16 33.7 G;
    and the mnist5k DDPM (bench) + LeNet 99.2 M. Counted on the meta device (nothing is allocated)."""
    bs = load_benchmark("bench_sampler")
    got = {}
    for name in ("ddpm+lenet", "ddpm-cifar10+resnet110", "ddpm-cifar10+vit224"):
        model, shape, k = bs.composed_model(name)
        got[name] = bs.flops_per_pass(model, shape)
        assert k == 10
    assert round(got["ddpm+lenet"] / 1e6, 1) == 99.2
    assert round(got["ddpm-cifar10+resnet110"] / 1e9, 1) == 12.6
    assert round(got["ddpm-cifar10+vit224"] / 1e9, 1) == 45.8      # 12.1 + 33.7


def test_gpu_check_records_a_broken_piece_and_goes_on(tmp_path):
    """A piece that raises, or a benchmark that cannot build its model, records its error and the next piece
    still runs; once the budget is spent, the remaining pieces are skipped with the reason."""
    gc = _load_check()
    # a generous stretch: the failing bench_sampler process must end by itself however loaded the machine is
    a = gc.build_parser().parse_args(["--cpu", "--budget", "400", "--stretch", "30", "--out", str(tmp_path / "r.json")])
    check = gc.Check(a)
    check.piece("raises", 10, lambda t: 1 / 0)
    check.piece("bench no_such_arch", 10, lambda t: gc.bench(t, ["--arch", "no_such_arch"], str(tmp_path / "b.json"),
                                                             "cpu"))
    check.piece("fine", 10, lambda t: {"status": "ok"})
    check.a.budget = 0
    check.piece("late", 10, lambda t: {"status": "ok"})
    got = json.load(open(tmp_path / "r.json"))["pieces"]
    assert got["raises"]["status"] == "error" and "ZeroDivisionError" in got["raises"]["error"]
    assert got["bench no_such_arch"]["status"] == "error" and "no_such_arch" in got["bench no_such_arch"]["output_tail"]
    assert got["fine"]["status"] == "ok" and got["late"] == {"status": "skipped", "reason": "time budget (0 s) spent"}
    assert [p[0] for p in gc.bench_plan(gc.GPU_BENCH)] == ["LeNet MNIST", "ResNet-110 CIFAR-10", "ResNet-50 ImageNet",
                                                          "DDPM-CIFAR10 + ResNet-110", "DDPM-CIFAR10 + ViT-B/16 224"]
    extra = gc.bench_plan(gc.CPU_BENCH, "mnist_43,lenet,ddpm-cifar10+vit224,ddpm+lenet")
    assert [p[0] for p in extra] == ["mnist_43", "LeNet MNIST", "DDPM-CIFAR10 + ViT-B/16 224", "ddpm+lenet"]
    assert "mnist_43" in extra[0][1] and extra[3][1][:2] == ["--composed", "ddpm+lenet"]
    assert "--arch" not in extra[3][1] and "--dataset" in extra[3][1]


def test_flops_per_pass_equals_torch_flop_counter():
    """bench_sampler's hook count of convolution/linear FLOPs equals torch.utils.flop_counter's."""
    from torch.utils.flop_counter import FlopCounterMode

    from certifynet.denoise import DenoisedClassifier, get_denoiser
    flops_per_pass = load_benchmark("bench_sampler").flops_per_pass
    lenet = get_architecture("lenet", "mnist5k")
    for model, shape in ((lenet, (1, 28, 28)),
                         (get_architecture("cifar_resnet20", "cifar10"), (3, 32, 32)),
                         (DenoisedClassifier(get_denoiser("drunet_small", 1), lenet, 0.5), (1, 28, 28))):
        meta = copy.deepcopy(model).to("meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta(torch.empty(2, *shape, device="meta"))
        assert flops_per_pass(model, shape) == counter.get_total_flops() / 2 > 0


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

LOSSES = {
    "gaussian": dict(method="gaussian", m=1),
    "consistency": dict(method="consistency", m=2, lbd=5.0, eta=0.5),
    "smoothmix": dict(method="smoothmix", m=2, num_steps=2, mix_step=1, eta=5.0, num_classes=10),
}


@cuda_test
@pytest.mark.parametrize("method", list(LOSSES))
@pytest.mark.parametrize("k", [0, 380])
def test_one_training_step_on_cuda(method, k):
    """One optimizer step of each training method on CUDA (Gaussian and generalized-Gaussian noise drawn on
    the device): finite loss, every parameter with a gradient moves."""
    torch.manual_seed(0)
    model = get_architecture("lenet", "mnist5k").cuda().train()
    g = torch.Generator("cuda").manual_seed(0)
    noise = GaussianNoise(0.25) if k == 0 else GeneralizedGaussianNoise(0.25, k, 784)
    x, y = torch.rand(32, 1, 28, 28, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, _ = LossSpec(**LOSSES[method])(model, x, y, lambda t: noise.sample_like(t, g), 0, g)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and loss.device.type == "cuda"
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@cuda_test
def test_train_cli_on_cuda(tmp_path):
    """scripts/train.py --device cuda: one short epoch on mnist5k through the real loop and checkpoint."""
    from certifynet.cli import train as cli_train
    from certifynet.models import load_checkpoint
    out = str(tmp_path / "run")
    assert cli_train.main(["mnist5k", "lenet", "--epochs", "1", "--train-subset", "256", "--test-subset", "128",
                           "--batch", "64", "--workers", "0", "--device", "cuda", "--no-progress", "--noise", "0.25",
                           "--outdir", out]) == 0
    ck = load_checkpoint(os.path.join(out, "checkpoint.pth"))
    assert ck.epoch == 1 and json.load(open(os.path.join(out, "log.meta.json")))["device"].startswith("cuda")


NCCL_WORKER = r'''
import json, os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from certifynet.models import get_architecture
from certifynet.noise import GaussianNoise
from certifynet.training import ddp
from certifynet.training.loop import LossSpec
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")  # torchrun's env; world size 1 (one GPU)
model = DDP(get_architecture("lenet", "mnist5k").cuda(), device_ids=[0])
g = torch.Generator("cuda").manual_seed(0)
x, y = torch.rand(16, 1, 28, 28, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
loss, _ = LossSpec(method="gaussian")(model, x, y, lambda t: GaussianNoise(0.25).sample_like(t, g))
loss.backward()
total = ddp.all_reduce_sum(torch.ones(3, device="cuda"))
obj = ddp.broadcast_object({"rank": dist.get_rank()})
ddp.barrier()
print(json.dumps({"backend": dist.get_backend(), "world": ddp.world_size(), "main": ddp.is_main(),
                  "sum": total.tolist(), "obj": obj, "loss": float(loss),
                  "grad": all(p.grad is not None for p in model.parameters())}))
ddp.cleanup()
'''


@pytest.mark.e2e
@cuda_test
def test_torchrun_one_process_nccl(tmp_path):
    """`torchrun --nproc_per_node=1` on one GPU: an NCCL process group, DDP forward/backward and the library's
    collective helpers; and scripts/train.py under torchrun on CUDA. (With one GPU, init_distributed itself
    opens no group: WORLD_SIZE is 1; its multi-rank NCCL branch needs 2+ GPUs.)"""
    from test_ddp import TORCHRUN_ENV
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]  # no port race
    worker = tmp_path / "nccl_worker.py"
    worker.write_text(NCCL_WORKER)
    r = subprocess.run([*run, str(worker)], capture_output=True, text=True, env=env,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["backend"] == "nccl" and got["world"] == 1 and got["main"] and got["sum"] == [1.0, 1.0, 1.0]
    assert got["obj"] == {"rank": 0} and got["grad"]
    out = str(tmp_path / "run")
    r = subprocess.run([*run, os.path.join(ROOT, "scripts", "train.py"), "mnist5k",
                        "lenet", "--epochs", "1", "--train-subset", "128", "--test-subset", "64", "--batch", "32",
                        "--workers", "0", "--device", "cuda", "--no-progress", "--noise", "0.25", "--outdir", out],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.exists(os.path.join(out, "checkpoint.pth"))


@cuda_test
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_drunet_and_classifier_on_cuda(amp):
    """DRUNet → LeNet (denoised smoothing) sampled on CUDA (channels_last, optionally bf16): counts sum to n,
    the caller's modules stay on the CPU, and fp32 CUDA predictions match the CPU's on ≥ 99% of noisy inputs."""
    from certifynet.denoise import DenoisedClassifier, get_denoiser
    torch.manual_seed(0)
    model = DenoisedClassifier(get_denoiser("drunet_small", 1), get_architecture("lenet", "mnist5k"), 0.5).eval()
    s = Sampler(model, 10, batch=256, device="cuda", amp=amp)
    x = torch.rand(1, 28, 28)
    counts = s.counts_np(x, GaussianNoise(0.5), 1000, input_generator(0, 0, 1, "cuda"))
    assert counts.sum() == 1000 and next(model.parameters()).device.type == "cpu"
    if not amp:
        noisy = x + 0.5 * torch.randn(512, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        flag = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32
        try:
            with torch.inference_mode():
                cpu, gpu = model(noisy).argmax(1), s.model(noisy.cuda()).argmax(1).cpu()
        finally:
            torch.backends.cudnn.allow_tf32 = flag
        assert (cpu == gpu).float().mean() >= 0.99
