"""Model registry and checkpoints: shapes, parameter counts, our format, and every reference layout.

The reference models below are rebuilt from the public code's structure (module names, Sequential indices,
a NormalizeLayer whose mean/std are plain attributes, DataParallel for ImageNet), randomly initialised
(BatchNorm statistics included), saved the way the reference scripts save them, loaded through
`load_checkpoint` and compared on the same input: the logits must be equal, not close.
"""
import argparse
import glob
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from certifynet import models as M
from certifynet.errors import CertifyNetError
from certifynet.models import (
    NORMALIZATION,
    get_architecture,
    load_checkpoint,
    parse_normalization,
    resolve_normalization,
    save_checkpoint,
)
from certifynet.models.layouts import infer_arch

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def randomize_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random values in every parameter and BatchNorm statistic, so that each tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.rand(t.shape, generator=g)
            t.copy_(0.5 + r if name.endswith("running_var") else (r - 0.5) * 0.2)
    return model.eval()


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---------------------------------------------------------------- reference structures (from the public code)
class RefNormalizeLayer(nn.Module):
    """locuslab/smoothing code/datasets.py: means/sds are plain tensor attributes (no state_dict keys)."""

    def __init__(self, means, sds):
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)

    def forward(self, x):
        b, c, h, w = x.shape
        means = self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        sds = self.sds.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        return (x - means) / sds


class RefInputCenterLayer(nn.Module):
    """llylly/DSRS datasets.py: subtract the mean only."""

    def __init__(self, means):
        super().__init__()
        self.means = torch.tensor(means)

    def forward(self, x):
        b, c, h, w = x.shape
        return x - self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)


class RefLeNet(nn.Module):
    """archs/lenet.py of smoothing-consistency / smoothmix / DSRS."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        return self.fc2(F.relu(self.fc1(x.view(-1, 800))))


class RefFlatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


def ref_conv4fc3(dropout=False):
    """DSRS `mnist_43` = Conv4FC3 of archs/mnist_conv.py, an nn.Sequential. `dropout=True`: a variant with
    Dropout after the hidden fc layers, which shifts the Linear indices (9, 12, 15) but not the eval logits."""
    fc = [nn.Linear(64 * 7 * 7, 512), nn.ReLU()] + ([nn.Dropout()] if dropout else [])
    fc += [nn.Linear(512, 512), nn.ReLU()] + ([nn.Dropout()] if dropout else []) + [nn.Linear(512, 10)]
    return nn.Sequential(nn.Conv2d(1, 32, 3, stride=1, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, stride=1, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
                         RefFlatten(), *fc)


class RefBlock(nn.Module):
    """Cohen's archs/cifar_resnet.py BasicBlock (bearpaw): conv1/bn1/relu/conv2/bn2/downsample."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class RefCifarResNet(nn.Module):
    """Cohen's archs/cifar_resnet.py ResNet(depth, BasicBlock): AvgPool2d(8), fc 64→10."""

    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [RefBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        layers += [RefBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


def reference_save(path, arch, model, legacy=False, **extra):
    """How the reference train scripts save: {'epoch','arch','state_dict','optimizer'} with torch.save
    (`legacy`: the pre-1.6 non-zip format of the 2019 releases)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    torch.save({"epoch": 90, "arch": arch, "state_dict": model.state_dict(), "optimizer": opt.state_dict(), **extra},
               path, _use_new_zipfile_serialization=not legacy)
    return path


def assert_same_logits(ref, loaded, x):
    with torch.no_grad():
        a, b = ref.eval()(x), loaded.eval()(x)
    assert a.shape == b.shape
    assert torch.equal(a, b), (a - b).abs().max()


# ---------------------------------------------------------------- registry
@pytest.mark.parametrize("arch, dataset", [("lenet", "mnist"), ("mnist_43", "mnist"), ("lenet", "mnist5k"),
                                           ("cifar_resnet20", "cifar10"), ("cifar_resnet110", "cifar10"),
                                           ("resnet50", "imagenet")])
def test_output_shapes(arch, dataset):
    model = get_architecture(arch, dataset).eval()
    b = 1 if arch == "resnet50" else 3
    shape = SHAPES["mnist" if dataset == "mnist5k" else dataset]
    with torch.no_grad():
        out = model(torch.rand(b, *shape))
    assert out.shape == (b, 1000 if dataset == "imagenet" else 10)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], M.NormalizeLayer)
    assert all(k.startswith("1.") for k in model.state_dict())   # the normalisation layer is stateless


@pytest.mark.parametrize("arch, count", [("lenet", 431_080), ("mnist_43", 1_974_762),
                                         ("cifar_resnet110", 1_730_714), ("cifar_resnet20", 272_474)])
def test_parameter_counts(arch, count):
    assert n_params(get_architecture(arch, M.DEFAULT_DATASET[arch])) == count


def test_reference_parameter_names():
    assert set(get_architecture("lenet", "mnist")[1].state_dict()) == set(RefLeNet().state_dict())
    assert set(get_architecture("mnist_43", "mnist")[1].state_dict()) == set(ref_conv4fc3().state_dict())
    assert set(get_architecture("cifar_resnet20", "cifar10")[1].state_dict()) == set(RefCifarResNet(20).state_dict())
    assert list(get_architecture("mnist_43", "mnist")[1].state_dict())[-1] == "13.bias"


def test_registry_errors():
    with pytest.raises(CertifyNetError, match="unknown arch"):
        get_architecture("vgg16", "cifar10")
    with pytest.raises(CertifyNetError, match="is for cifar10"):
        get_architecture("cifar_resnet20", "mnist")


def test_normalization_specs():
    assert resolve_normalization(None, "cifar_resnet20", "cifar10")[1:] == NORMALIZATION["cifar10"]
    assert resolve_normalization("dataset", "lenet", "mnist") == ("identity", (0.0,), (1.0,))   # consistency/SmoothMix
    assert resolve_normalization("dataset", "mnist_43", "mnist") == ("dataset", (0.5,), (0.5,))  # DSRS
    assert resolve_normalization("center", "resnet50", "imagenet") == ("center", (0.485, 0.456, 0.406), (1.0,) * 3)
    assert resolve_normalization(((0.1,), (0.2,)), "lenet", "mnist") == ("custom", (0.1,), (0.2,))
    assert parse_normalization("0.1,0.2,0.3/1,1,1") == ((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    assert parse_normalization("center") == "center" and parse_normalization(None) is None
    with pytest.raises(CertifyNetError):
        parse_normalization("bogus")
    with pytest.raises(CertifyNetError):
        resolve_normalization(((0.1, 0.2), (1.0, 1.0)), "cifar_resnet20", "cifar10")   # 2 values for 3 channels
    with pytest.raises(CertifyNetError):
        get_architecture("lenet", "mnist", "centre")


# ---------------------------------------------------------------- our format
def test_round_trip(tmp_path):
    model = randomize_(get_architecture("lenet", "mnist"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = str(tmp_path / "run" / "checkpoint.pth")
    save_checkpoint(path, model, arch="lenet", dataset="mnist", num_classes=10, sigma=0.25, k=380, epoch=7,
                    optimizer=opt, args=argparse.Namespace(lr=0.1, tag=object()))
    ck = load_checkpoint(path)
    assert (ck.arch, ck.dataset, ck.num_classes, ck.sigma, ck.k, ck.epoch) == ("lenet", "mnist", 10, 0.25, 380, 7)
    assert ck.source == "certifynet" and ck.layout == "1.<name>"
    assert ck.normalization == {"kind": "checkpoint", "mean": [0.0], "std": [1.0]}
    assert ck.sha256 == M.file_sha256(path) and len(ck.sha256) == 64
    meta = ck.metadata()
    assert meta["checkpoint_source"] == "certifynet" and meta["train_sigma"] == 0.25 and meta["arch"] == "lenet"
    assert ck.raw["optimizer"] is not None and isinstance(ck.raw["args"]["tag"], str)
    assert_same_logits(model, ck.model, torch.rand(4, 1, 28, 28))
    # the dataset alias and an explicit matching arch are accepted
    assert load_checkpoint(path, arch="lenet", dataset="mnist5k").dataset == "mnist5k"


def test_round_trip_keeps_custom_normalization(tmp_path):
    model = randomize_(get_architecture("mnist_43", "mnist", ((0.1307,), (0.3081,))))
    path = str(tmp_path / "m.pth")
    save_checkpoint(path, model, arch="mnist_43", dataset="mnist", num_classes=10)
    ck = load_checkpoint(path)
    assert ck.model[0].values() == ((0.1307,), (0.3081,)) and ck.raw["normalization"]["mean"] == [0.1307]
    assert_same_logits(model, ck.model, torch.rand(2, 1, 28, 28))
    # an explicit override wins and is recorded
    assert load_checkpoint(path, normalization="identity").normalization["kind"] == "identity"


def test_save_records_the_models_own_normalization(tmp_path):
    model = get_architecture("cifar_resnet20", "cifar10", "center")
    save_checkpoint(str(tmp_path / "c.pth"), nn.DataParallel(model), arch="cifar_resnet20", dataset="cifar10",
                    num_classes=10)
    raw = M.read_checkpoint_file(str(tmp_path / "c.pth"))
    assert raw["normalization"] == {"mean": [0.4914, 0.4822, 0.4465], "std": [1.0, 1.0, 1.0]}
    assert all(k.startswith("1.") for k in raw["state_dict"])   # the DataParallel wrapper is not saved
    with pytest.raises(CertifyNetError, match="differs"):
        save_checkpoint(str(tmp_path / "d.pth"), model, arch="cifar_resnet20", dataset="cifar10", num_classes=10,
                        normalization="dataset")
    assert not os.path.exists(tmp_path / "d.pth")


def test_arch_and_dataset_mismatch(tmp_path):
    path = str(tmp_path / "c.pth")
    save_checkpoint(path, get_architecture("cifar_resnet20", "cifar10"), arch="cifar_resnet20", dataset="cifar10",
                    num_classes=10)
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(path, arch="cifar_resnet110")
    assert "cifar_resnet20" in one_line(e) and "cifar_resnet110" in one_line(e)
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(path, dataset="imagenet")
    assert "cifar10" in one_line(e)
    # a reference file carries no dataset: a wrong one shows up as a shape mismatch, in one line
    five = nn.Sequential(nn.Identity(), RefLeNet(num_classes=5))
    ref = reference_save(str(tmp_path / "lenet.pth.tar"), "lenet", five)
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(ref)
    assert "fc2.weight" in one_line(e) and "(5, 500)" in one_line(e)


@pytest.mark.parametrize("kind", ["truncated", "truncated-legacy", "random", "empty", "text"])
def test_corrupt_files(tmp_path, kind):
    path = str(tmp_path / "bad.pth")
    if kind.startswith("truncated"):
        save_checkpoint(path, get_architecture("lenet", "mnist"), arch="lenet", dataset="mnist", num_classes=10)
        if kind == "truncated-legacy":
            torch.save(M.read_checkpoint_file(path), path, _use_new_zipfile_serialization=False)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "random":  # garbage of many shapes: the unpickler can fail in many ways, each must be one line
        rng = np.random.default_rng(0)
        for i in range(300):
            head = (b"", b"\x80\x02", b"\x80\x04", b"PK\x03\x04")[i % 4]
            open(path, "wb").write(head + rng.bytes(int(rng.integers(1, 4096))))
            with pytest.raises(CertifyNetError) as e:
                load_checkpoint(path)
            assert "corrupt" in one_line(e) and path in one_line(e), (i, one_line(e))
    elif kind == "empty":
        open(path, "wb").close()
    else:
        open(path, "w").write("not a checkpoint\n")
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(path)
    assert "corrupt" in one_line(e) and path in one_line(e)


def test_missing_file_and_non_dict(tmp_path):
    with pytest.raises(CertifyNetError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(CertifyNetError, match="not a dict"):
        load_checkpoint(str(tmp_path / "list.pth"))
    torch.save({"epoch": 3, "arch": "lenet"}, tmp_path / "nostate.pth")
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(str(tmp_path / "nostate.pth"))
    assert "no 'state_dict'" in one_line(e)


def test_atomic_save_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    model = get_architecture("lenet", "mnist")
    save_checkpoint(str(path), model, arch="lenet", dataset="mnist", num_classes=10, epoch=1)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(str(path), model, arch="lenet", dataset="mnist", num_classes=10, epoch=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before and load_checkpoint(str(path)).epoch == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]          # no .tmp-* left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask               # not mkstemp's 0600
    with pytest.raises(KeyboardInterrupt):                               # nor on an interrupt
        monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        save_checkpoint(str(tmp_path / "new.pth"), model, arch="lenet", dataset="mnist", num_classes=10)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]


# ---------------------------------------------------------------- reference layouts
def test_cohen_cifar_resnet110(tmp_path):
    ref = randomize_(nn.Sequential(RefNormalizeLayer(*NORMALIZATION["cifar10"]), RefCifarResNet(110)))
    assert next(iter(ref.state_dict())) == "1.conv1.weight"
    path = reference_save(str(tmp_path / "checkpoint.pth.tar"), "cifar_resnet110", ref, legacy=True)   # 2019 file
    ck = load_checkpoint(path)
    assert (ck.arch, ck.dataset, ck.source, ck.layout, ck.epoch) == ("cifar_resnet110", "cifar10", "cohen",
                                                                     "1.<name>", 90)
    assert ck.normalization["kind"] == "dataset" and ck.sigma is None
    assert_same_logits(ref, ck.model, torch.rand(2, 3, 32, 32))


@pytest.fixture(scope="module")
def cohen_imagenet(tmp_path_factory):
    """Cohen's ImageNet model: Sequential(NormalizeLayer, DataParallel(resnet50)), saved in the legacy format."""
    from torchvision.models import resnet50
    torch.manual_seed(0)
    ref = randomize_(nn.Sequential(RefNormalizeLayer(*NORMALIZATION["imagenet"]), nn.DataParallel(resnet50())))
    path = tmp_path_factory.mktemp("cohen_models") / "imagenet" / "resnet50" / "noise_0.50" / "checkpoint.pth.tar"
    path.parent.mkdir(parents=True)
    reference_save(str(path), "resnet50", ref, legacy=True)
    return ref, str(path)


def test_cohen_imagenet_resnet50(cohen_imagenet):
    ref, path = cohen_imagenet
    assert all(k.startswith("1.module.") for k in ref.state_dict())
    ck = load_checkpoint(path)
    assert (ck.arch, ck.dataset, ck.num_classes, ck.source, ck.layout) == ("resnet50", "imagenet", 1000, "cohen",
                                                                           "1.module.<name>")
    assert_same_logits(ref, ck.model, torch.rand(1, 3, 224, 224))


def test_dsrs_imagenet_needs_center(cohen_imagenet):
    """DSRS fine-tunes Cohen's models behind an InputCenterLayer: same keys, mean subtraction only."""
    cohen, path = cohen_imagenet
    ref = nn.Sequential(RefInputCenterLayer(NORMALIZATION["imagenet"][0]), cohen[1]).eval()
    ck = load_checkpoint(path, normalization="center")
    assert ck.source == "dsrs" and ck.normalization == {"kind": "center", "mean": [0.485, 0.456, 0.406],
                                                        "std": [1.0, 1.0, 1.0]}
    assert_same_logits(ref, ck.model, torch.rand(1, 3, 64, 64))   # small input: resnet50 pools adaptively


@pytest.mark.parametrize("method", ["consistency", "smoothmix"])
def test_consistency_smoothmix_mnist_lenet(tmp_path, method):
    ref = randomize_(nn.Sequential(nn.Identity(), RefLeNet()))     # get_normalize_layer('mnist') is Identity
    assert sorted(ref.state_dict())[0] == "1.conv1.bias"
    path = reference_save(str(tmp_path / f"{method}.pth.tar"), "lenet", ref)
    ck = load_checkpoint(path)
    assert (ck.arch, ck.dataset, ck.source) == ("lenet", "mnist", "consistency/smoothmix")
    assert ck.normalization == {"kind": "identity", "mean": [0.0], "std": [1.0]}
    assert_same_logits(ref, ck.model, torch.rand(3, 1, 28, 28))


@pytest.mark.parametrize("method", ["consistency", "smoothmix"])
def test_consistency_smoothmix_cifar(tmp_path, method):
    ref = randomize_(nn.Sequential(RefNormalizeLayer(*NORMALIZATION["cifar10"]), RefCifarResNet(20)))
    path = reference_save(str(tmp_path / "checkpoint.pth.tar"), "cifar_resnet20", ref)
    ck = load_checkpoint(path, dataset="cifar10")
    assert ck.arch == "cifar_resnet20" and ck.source == "cohen"
    assert_same_logits(ref, ck.model, torch.rand(2, 3, 32, 32))


def test_dsrs_mnist_43(tmp_path):
    ref = randomize_(nn.Sequential(RefNormalizeLayer([0.5], [0.5]), ref_conv4fc3()))
    assert [k for k in ref.state_dict()][:3] == ["1.0.weight", "1.0.bias", "1.2.weight"]
    path = reference_save(str(tmp_path / "cohen-mnist-380-0.50.pth.tar"), "mnist_43", ref)
    ck = load_checkpoint(path)
    assert (ck.arch, ck.source, ck.layout) == ("mnist_43", "dsrs", "1.<name>")
    assert ck.normalization == {"kind": "dataset", "mean": [0.5], "std": [0.5]}
    assert_same_logits(ref, ck.model, torch.rand(3, 1, 28, 28))


def test_sequential_indices_that_differ_map_by_position(tmp_path):
    ref = randomize_(nn.Sequential(RefNormalizeLayer([0.5], [0.5]), ref_conv4fc3(dropout=True)))
    assert "1.15.weight" in ref.state_dict() and "1.13.weight" not in ref.state_dict()
    path = reference_save(str(tmp_path / "variant.pth.tar"), "mnist_43", ref)
    ck = load_checkpoint(path)
    assert ck.layout.endswith("(by position)")
    assert_same_logits(ref, ck.model, torch.rand(2, 1, 28, 28))


@pytest.mark.parametrize("wrap", ["bare", "module", "sequential"])
def test_bare_state_dict_infers_arch(tmp_path, wrap):
    net = randomize_(RefCifarResNet(20))
    state = {"bare": net.state_dict(), "module": nn.DataParallel(net).state_dict(),
             "sequential": nn.Sequential(RefNormalizeLayer(*NORMALIZATION["cifar10"]), net).state_dict()}[wrap]
    torch.save(state, tmp_path / "sd.pth")
    ck = load_checkpoint(str(tmp_path / "sd.pth"))
    assert (ck.arch, ck.dataset, ck.source) == ("cifar_resnet20", "cifar10", "state_dict")
    assert ck.layout == {"bare": "<name>", "module": "module.<name>", "sequential": "1.<name>"}[wrap]
    assert_same_logits(nn.Sequential(RefNormalizeLayer(*NORMALIZATION["cifar10"]), net), ck.model,
                       torch.rand(2, 3, 32, 32))


def _tv_resnet50():
    from torchvision.models import resnet50
    return resnet50()


@pytest.mark.parametrize("arch, net", [("lenet", RefLeNet), ("mnist_43", ref_conv4fc3),
                                       ("cifar_resnet110", lambda: RefCifarResNet(110)), ("resnet50", _tv_resnet50)])
def test_infer_arch_from_keys(arch, net):
    with torch.device("meta"):   # keys and shapes only
        net = net()
    assert infer_arch(net.state_dict()) == arch
    assert infer_arch(nn.Sequential(nn.Identity(), net).state_dict()) == arch
    assert infer_arch(nn.Sequential(nn.Identity(), nn.DataParallel(net)).state_dict()) == arch


@pytest.mark.parametrize("wrapper", ["module", "_orig_mod"])
def test_ddp_and_compile_prefixes_on_our_format(tmp_path, wrapper):
    model = randomize_(get_architecture("lenet", "mnist"))
    path = str(tmp_path / "ours.pth")
    save_checkpoint(path, model, arch="lenet", dataset="mnist", num_classes=10)
    raw = M.read_checkpoint_file(path)
    raw["state_dict"] = {f"{wrapper}.{k}": v for k, v in raw["state_dict"].items()}   # DDP(model).state_dict()
    torch.save(raw, path)
    ck = load_checkpoint(path)
    assert ck.source == "certifynet" and ck.layout == f"{wrapper}.1.<name>"
    assert_same_logits(model, ck.model, torch.rand(2, 1, 28, 28))


def test_our_old_mnist_43_names_still_load(tmp_path):
    model = randomize_(get_architecture("mnist_43", "mnist"))
    path = str(tmp_path / "old.pth")
    save_checkpoint(path, model, arch="mnist_43", dataset="mnist", num_classes=10)
    raw = M.read_checkpoint_file(path)
    old = {"0": "conv1", "2": "conv2", "4": "conv3", "6": "conv4", "9": "fc1", "11": "fc2", "13": "fc3"}
    raw["state_dict"] = {f"1.{old[k.split('.')[1]]}.{k.split('.')[2]}": v for k, v in raw["state_dict"].items()}
    torch.save(raw, path)
    ck = load_checkpoint(path)
    assert "legacy" in ck.layout
    assert_same_logits(model, ck.model, torch.rand(2, 1, 28, 28))


def test_files_without_num_batches_tracked(tmp_path):
    ref = randomize_(nn.Sequential(RefNormalizeLayer(*NORMALIZATION["cifar10"]), RefCifarResNet(20)))
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"arch": "cifar_resnet20", "state_dict": state}, tmp_path / "old.pth.tar")
    assert_same_logits(ref, load_checkpoint(str(tmp_path / "old.pth.tar")).model, torch.rand(2, 3, 32, 32))


def test_unknown_layout_is_one_line(tmp_path):
    ref = nn.Sequential(nn.Identity(), RefLeNet()).state_dict()
    state = {k.replace("conv", "convolution"): v for k, v in ref.items()}
    torch.save({"arch": "lenet", "state_dict": state}, tmp_path / "odd.pth")
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(str(tmp_path / "odd.pth"))
    msg = one_line(e)
    assert "unknown layout for arch 'lenet'" in msg and "'convolution1.bias'" in msg and "'conv1.bias'" in msg
    torch.save({"arch": "cifar_densenet40", "state_dict": state}, tmp_path / "dense.pth")   # consistency has one
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(str(tmp_path / "dense.pth"))
    assert "cifar_densenet40" in one_line(e) and "does not provide" in one_line(e)
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(str(tmp_path / "bare.pth"))
    assert "pass arch (lenet, " in one_line(e) and "pass --arch (lenet, " in e.value.render(cli=True)


# ---------------------------------------------------------------- pickled payloads
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_refused(tmp_path, legacy):
    marker = tmp_path / "pwned"
    ref = nn.Sequential(nn.Identity(), RefLeNet())
    path = reference_save(str(tmp_path / "evil.pth.tar"), "lenet", ref, legacy=legacy, hook=_Payload(marker))
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(path)
    msg = one_line(e)
    assert "system" in msg and "weights_only" in msg and "refuses" in msg
    assert not marker.exists()


def test_other_pickled_classes_are_refused(tmp_path):
    import numpy as np
    torch.save({"arch": "lenet", "state_dict": RefLeNet().state_dict(), "best_acc": np.float64(0.9)},
               tmp_path / "np.pth")
    with pytest.raises(CertifyNetError) as e:
        load_checkpoint(str(tmp_path / "np.pth"))
    assert "numpy" in one_line(e)


def test_argparse_namespace_is_allowed(tmp_path):
    ref = randomize_(nn.Sequential(nn.Identity(), RefLeNet()))
    args = argparse.Namespace(arch="lenet", lr=0.01, noise_sd=0.25, outdir="logs/mnist", gpu=None)
    path = reference_save(str(tmp_path / "with_args.pth.tar"), "lenet", ref, args=args)
    ck = load_checkpoint(path)
    assert isinstance(ck.raw["args"], argparse.Namespace) and ck.raw["args"].noise_sd == 0.25
    assert_same_logits(ref, ck.model, torch.rand(2, 1, 28, 28))


# ---------------------------------------------------------------- train.py --pretrained-model
def test_train_pretrained_model_accepts_cohen_resnet50(cohen_imagenet):
    """scripts/train.py builds its model with training.loop.build_model (before it reads any data)."""
    loop = pytest.importorskip("certifynet.training.loop")
    ref, path = cohen_imagenet
    cfg = loop.TrainConfig(dataset="imagenet", arch="resnet50", sigma=0.5, pretrained_model=path)
    model = loop.build_model(cfg)[0]
    got, want = model.state_dict(), ref.state_dict()
    assert len(got) == len(want)
    assert all(torch.equal(got[k.replace("module.", "")], v) for k, v in want.items())


def test_train_cli_gets_past_the_checkpoint(cohen_imagenet, tmp_path, capsys):
    """ImageNet data is absent here: train.py must load the checkpoint and then fail on the data, in one line."""
    cli = pytest.importorskip("certifynet.cli.train")
    _, path = cohen_imagenet
    rc = cli.main(["imagenet", "resnet50", "--noise", "0.5", "--pretrained-model", path, "--dry-run",
                   "--data-dir", str(tmp_path / "no-data"), "--outdir", str(tmp_path / "out"), "--device", "cpu",
                   "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "checkpoint" not in err and path not in err, err
    assert not glob.glob(str(tmp_path / "out" / "*.pth"))


# ---------------------------------------------------------------- denoised-smoothing denoisers (--denoiser)
def ref_dncnn(depth=17, channels=64, image_channels=3):
    """microsoft/denoised-smoothing code/archs/dncnn.py: one Sequential `dncnn`; forward x − dncnn(x)."""
    layers = [nn.Conv2d(image_channels, channels, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                   nn.BatchNorm2d(channels, eps=0.0001, momentum=0.95), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(channels, image_channels, 3, padding=1, bias=False))
    net = nn.Module()
    net.dncnn = nn.Sequential(*layers)
    net.forward = lambda x: x - net.dncnn(x)
    return net


@pytest.mark.parametrize("arch", ["cifar_dncnn", "imagenet_dncnn"])
def test_denoised_smoothing_dncnn(tmp_path, arch):
    ckpt = pytest.importorskip("certifynet.denoise.checkpoint")
    ref = randomize_(ref_dncnn(depth=5, channels=16))
    saved = nn.DataParallel(ref) if arch == "imagenet_dncnn" else ref   # get_architecture wraps ImageNet ones
    path = reference_save(str(tmp_path / "checkpoint.pth.tar"), arch, saved)
    den = ckpt.load_denoiser(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(den.model(x, 0.25), ref(x))
