"""Batch-norm folding (audit/fold.py): hand-computed weights, same outputs and maps, and the cases it must refuse."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from audit.cam import grad_cam
from audit.fold import ActAfterFold, fold_batchnorm


def _random_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters (fresh ones are the identity and would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def test_hand_computed_fold():
    # y = γ (2x − μ) / √(σ² + ε) + β with μ = 1, σ² = 3, ε = 1, γ = 0.5, β = 0.25  →  y = 0.5 x
    m = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1, eps=1.0))
    m[0].weight.data.fill_(2.0)
    m[1].running_mean.fill_(1.0)
    m[1].running_var.fill_(3.0)
    m[1].weight.data.fill_(0.5)
    m[1].bias.data.fill_(0.25)
    x = torch.arange(4.0).view(1, 1, 2, 2)
    rep = fold_batchnorm(m, x)
    assert (rep.n_folded, rep.n_norm, rep.folded) == (1, 1, ["1"])
    assert isinstance(m[1], nn.Identity)
    assert m[0].weight.item() == 0.5 and m[0].bias.item() == 0.0
    torch.testing.assert_close(m(x), 0.5 * x)


@pytest.mark.parametrize("arch,layers,n_norm", [("resnet18", ["layer4", "layer3"], 20),
                                                ("efficientnet_b0", ["bn2", "blocks.5"], 49)])
def test_same_logits_and_maps(arch, layers, n_norm):
    import timm
    import torchvision
    torch.manual_seed(0)
    model = (torchvision.models.resnet18(num_classes=3) if arch == "resnet18"
             else timm.create_model(arch, pretrained=False, num_classes=3))
    _random_stats(model)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for layer in layers:
        folded = copy.deepcopy(model)
        rep = fold_batchnorm(folded, x, keep=[layer])
        assert (rep.n_folded, rep.n_norm, rep.skipped) == (n_norm, n_norm, {})
        a, b = grad_cam(model, x, layer), grad_cam(folded, x, layer)
        torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.cams, a.cams, rtol=1e-4, atol=1e-5 * float(a.cams.max()))
        torch.testing.assert_close(b.features, a.features, rtol=1e-4, atol=1e-5)
    if arch == "efficientnet_b0":  # BatchNormAct2d: the norm folds, its activation stays under the same name
        assert isinstance(folded.bn2, ActAfterFold) and isinstance(folded.bn2.act, nn.SiLU)


def test_target_conv_is_kept():
    import timm
    model = _random_stats(timm.create_model("efficientnet_b0", pretrained=False, num_classes=3))
    x = torch.randn(2, 3, 64, 64)
    folded = copy.deepcopy(model)
    rep = fold_batchnorm(folded, x, keep=["conv_head"])
    assert rep.skipped == {"bn2": "conv_head is kept as it is (target layer)"} and rep.n_folded == 48
    torch.testing.assert_close(grad_cam(folded, x, "conv_head").cams, grad_cam(model, x, "conv_head").cams,
                               rtol=1e-4, atol=1e-6)


class _Shared(nn.Module):
    """conv → bn, and the conv's output also added back: folding would change the skip branch."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _PreAct(nn.Module):
    """bn before the conv (pre-activation, as in DenseNet): nothing to fold into."""

    def __init__(self):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 3, 3)

    def forward(self, x):
        return self.conv(self.bn(x))


class _Twice(nn.Module):
    """one conv and bn applied twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(self.bn(self.conv(x))))


@pytest.mark.parametrize("cls,why", [(_Shared, "conv's output is also read elsewhere"),
                                     (_PreAct, "input is not a convolution's output"),
                                     (_Twice, "called more than once per forward")])
def test_refuses_what_would_change_the_output(cls, why):
    torch.manual_seed(0)
    model = _random_stats(cls())
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    rep = fold_batchnorm(model, x)
    assert rep.n_folded == 0 and why in rep.skipped["bn"]
    assert isinstance(model.bn, nn.BatchNorm2d)
    torch.testing.assert_close(model(x), ref)


def test_batch_statistics_norm_is_not_folded():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)).eval()
    rep = fold_batchnorm(model, torch.randn(2, 3, 4, 4))
    assert rep.n_folded == 0 and rep.skipped == {"1": "no running statistics"}


def test_audit_folded_equals_as_loaded(tiny_run, tmp_path):
    """The audit folds by default: same rows and maps as the model as loaded, the choice in summary.json and in the
    cache key."""
    from audit.config import resolve_config
    from audit.pipeline import run_audit
    from tests.test_scale import _same

    def cfg(out, **kw):
        return resolve_config({"run_dir": str(tiny_run), "out": str(tmp_path / out), "workers": 0, "n_boot": 20,
                               "batch_size": 2, "split": "all", **kw})
    folded = run_audit(cfg("f", cache=False))
    plain = run_audit(cfg("p", cache=False, fold_bn=False))
    assert folded.summary.cam.batchnorm.startswith("20 of 20 BatchNorm2d layers folded")
    assert plain.summary.cam.batchnorm == "as loaded (--no-fold-bn)"
    _same(tmp_path / "f", tmp_path / "p", exact=False)
    run_audit(cfg("c"))
    assert run_audit(cfg("c", fold_bn=False)).summary.cache.computed == 6
