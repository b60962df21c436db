"""Denoisers (DRUNet, DnCNN), objectives and the F∘D composition. CPU, tiny configurations."""
import math

import pytest
import torch
import torch.nn as nn

from certifynet.denoise import (
    DENOISER_PRESETS,
    DenoisedClassifier,
    DnCNN,
    DRUNet,
    build_denoiser_from_config,
    classification_loss,
    denoiser_config,
    freeze,
    get_denoiser,
    l1_loss,
    load_denoiser_state_dict,
    mse_loss,
    stability_loss,
)
from certifynet.errors import CertifyNetError


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- architectures

@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("hw", [(28, 28), (32, 32), (27, 31)])
def test_drunet_shapes_pad_and_crop(c, hw):
    net = get_denoiser("drunet_small", c)
    seen = []
    net.m_head.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape))
    x = torch.rand(2, c, *hw)
    with torch.no_grad():
        y = net(x, 0.25)
    assert y.shape == x.shape
    b, cin, h, w = seen[0]
    assert (b, cin) == (2, c + 1) and h % 8 == 0 and w % 8 == 0 and h - hw[0] < 8 and w - hw[1] < 8


@pytest.mark.parametrize("c, expected", [(1, 32_638_656), (3, 32_640_960)])
def test_drunet_paper_parameter_count(c, expected):
    with torch.device("meta"):  # build only, no memory, no forward
        assert n_params(get_denoiser("drunet", c)) == expected


def test_dncnn_parameter_count():
    with torch.device("meta"):
        assert n_params(get_denoiser("dncnn", 3)) == 558_400


def test_drunet_bias_free_no_bn():
    net = get_denoiser("drunet_small", 3)
    assert not [n for n, _ in net.named_parameters() if n.endswith("bias")]
    assert not [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_drunet_matches_kair_unetres_layout():
    """Keys/shapes of KAIR UNetRes(bias=False): published drunet_*.pth load by key."""
    nc, nb, c = (8, 16, 24, 32), 2, 3
    exp = {"m_head.weight": (nc[0], c + 1, 3, 3), "m_tail.weight": (c, nc[0], 3, 3)}

    def res(prefix, first, ch):
        for j in range(first, first + nb):
            for k in (0, 2):
                exp[f"{prefix}.{j}.res.{k}.weight"] = (ch, ch, 3, 3)

    for i in (1, 2, 3):
        res(f"m_down{i}", 0, nc[i - 1])
        exp[f"m_down{i}.{nb}.weight"] = (nc[i], nc[i - 1], 2, 2)  # Conv2d: [out, in, k, k]
        exp[f"m_up{i}.0.weight"] = (nc[i], nc[i - 1], 2, 2)  # ConvTranspose2d: [in, out, k, k]
        res(f"m_up{i}", 1, nc[i - 1])
    res("m_body", 0, nc[3])
    got = {k: tuple(v.shape) for k, v in DRUNet(c, nc, nb).state_dict().items()}
    assert got == exp


def test_dncnn_matches_denoised_smoothing_layout_and_is_residual():
    net = DnCNN(3)
    sd = net.state_dict()
    assert set(sd) >= {"dncnn.0.weight", "dncnn.0.bias", "dncnn.2.weight", "dncnn.3.running_var", "dncnn.47.weight"}
    assert "dncnn.2.bias" not in sd and "dncnn.47.bias" not in sd
    assert net.dncnn[3].eps == 1e-4
    x = torch.rand(2, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), x)  # last conv starts at zero: D = identity
        net.dncnn[-1].weight.normal_()
        assert torch.allclose(net(x, 0.5), x - net.dncnn(x))  # residual, σ ignored


# ---------------------------------------------------------------- σ map

@pytest.mark.parametrize("sigma", [0.5, torch.tensor(0.25), torch.tensor([0.12, 1.0])])
def test_sigma_map_carries_sigma(sigma):
    net = get_denoiser("drunet_small", 3)
    seen = []
    net.m_head.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        net(x, sigma)
    inp = seen[0]
    want = torch.as_tensor(sigma, dtype=torch.float32).expand(2).view(2, 1, 1)
    assert torch.equal(inp[:, -1], want.expand(2, 16, 16))  # σ itself, noise-free, no /255
    assert torch.equal(inp[:, :3], x)


def test_sigma_wrong_shape_rejected():
    with pytest.raises(ValueError):
        get_denoiser("drunet_small", 1)(torch.rand(2, 1, 8, 8), torch.tensor([0.1, 0.2, 0.3]))


def test_inference_mode_and_channels_last():
    net = get_denoiser("drunet_small", 3).eval()
    x = torch.rand(2, 3, 24, 20)
    with torch.no_grad():
        ref = net(x, 0.25)
    net = net.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = net(x.contiguous(memory_format=torch.channels_last), 0.25)
    assert torch.allclose(out, ref, atol=1e-5)


# ---------------------------------------------------------------- registry / checkpoints

@pytest.mark.parametrize("name", ["drunet_small", "dncnn"])
def test_config_roundtrip_and_weight_loading(name):
    net = get_denoiser(name, 3).eval()
    cfg = denoiser_config(nn.DataParallel(net))
    assert cfg["name"] == DENOISER_PRESETS[name]["arch"] and cfg["in_channels"] == 3
    twin = build_denoiser_from_config(cfg).eval()
    wrapped = {"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}
    load_denoiser_state_dict(twin, wrapped)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(twin(x, 0.5), net(x, 0.5))


def test_unknown_denoiser():
    with pytest.raises(CertifyNetError):
        get_denoiser("unet9000", 3)
    with pytest.raises(CertifyNetError):
        get_denoiser("drunet", 3, channels=(8, 16))


# ---------------------------------------------------------------- objectives

def test_mse_l1_exact():
    d = torch.tensor([[0.0, 1.0], [2.0, -3.0]])
    x = torch.zeros(2, 2)
    assert mse_loss(d, x).item() == pytest.approx((0 + 1 + 4 + 9) / 4)
    assert l1_loss(d, x).item() == pytest.approx((0 + 1 + 2 + 3) / 4)


def _linear_classifier():
    """F(z) = W z with W = [[1, 0], [0, 1], [1, 1]] (3 classes, 2 features)."""
    f = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    return f


def _ce(logits, label):
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def test_stability_loss_vs_hand_and_gradients():
    f = freeze(_linear_classifier())
    grad_enabled = []
    f.register_forward_hook(lambda m, i, o: grad_enabled.append(torch.is_grad_enabled()))
    clean = torch.tensor([[2.0, -1.0], [-1.0, 3.0]], requires_grad=True)  # F: [2,-1,1] → 0; [-1,3,2] → 1
    denoised = torch.tensor([[0.5, 0.5], [1.0, 0.0]], requires_grad=True)  # F: [.5,.5,1]; [1,0,1]
    loss = stability_loss(f, denoised, clean)
    want = (_ce([0.5, 0.5, 1.0], 0) + _ce([1.0, 0.0, 1.0], 1)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert grad_enabled == [False, True]  # pseudo-label under no_grad, then the denoised pass
    loss.backward()
    assert denoised.grad is not None and clean.grad is None and f.weight.grad is None


def test_stability_equals_classification_against_clean_argmax():
    f = freeze(_linear_classifier())
    clean, denoised = torch.randn(5, 2), torch.randn(5, 2)
    y = f(clean).argmax(1)
    assert torch.equal(stability_loss(f, denoised, clean), classification_loss(f, denoised, y))


def test_classification_loss_vs_hand():
    f = _linear_classifier()
    denoised = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    got = classification_loss(f, denoised, torch.tensor([2, 0])).item()
    assert got == pytest.approx((_ce([0.5, 0.5, 1.0], 2) + _ce([1.0, 0.0, 1.0], 0)) / 2, rel=1e-6)


# ---------------------------------------------------------------- composition

class _Log(nn.Module):
    def __init__(self, log, tag, fn):
        super().__init__()
        self.log, self.tag, self.fn = log, tag, fn

    def forward(self, x, *args):
        self.log.append((self.tag, x.clone(), args))
        return self.fn(x)


def test_denoised_classifier_order():
    log = []
    denoiser = _Log(log, "denoise", lambda x: torch.full_like(x, 0.5))
    normalize = _Log(log, "normalize", lambda x: (x - 0.25) / 0.5)
    head = nn.Flatten()
    model = DenoisedClassifier(denoiser, nn.Sequential(normalize, head), sigma=0.25)
    x = torch.rand(2, 1, 2, 2)
    out = model(x)
    assert [t for t, _, _ in log] == ["denoise", "normalize"]
    assert torch.equal(log[0][1], x) and log[0][2] == (0.25,)  # D gets the noisy input and σ
    assert torch.equal(log[1][1], torch.full_like(x, 0.5))  # normalisation sees D's output
    assert torch.allclose(out, torch.full((2, 4), 0.5))


def test_freeze_and_train_keeps_frozen_classifier_in_eval():
    clf = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert freeze(clf) is clf and not clf.training
    assert not any(p.requires_grad for p in clf.parameters())
    model = DenoisedClassifier(get_denoiser("drunet_small", 1), nn.Sequential(nn.Flatten(), nn.Linear(64, 4), clf), 0.5)
    freeze(model.classifier)
    model.train()
    assert model.denoiser.training and not model.classifier.training and not clf[1].training
    x = torch.rand(3, 1, 8, 8)
    with torch.inference_mode():
        assert model.eval()(x).shape == (3, 4)


@pytest.mark.parametrize("name", ["drunet_small", "dncnn"])
def test_stability_step_trains_denoiser_only(name):
    denoiser = get_denoiser(name, 1, **({"depth": 3, "channels": 4} if name == "dncnn" else {}))
    clf = freeze(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    model = DenoisedClassifier(denoiser, clf, sigma=0.5).train()
    clean = torch.rand(4, 1, 8, 8)
    noisy = clean + 0.5 * torch.randn_like(clean)
    stability_loss(clf, model.denoiser(noisy, model.sigma), clean).backward()
    assert all(p.grad is not None for p in denoiser.parameters())
    assert all(p.grad is None for p in clf.parameters())
