"""Known-answer tests of the model-parameter randomisation check (audit.sanity) on a tiny CNN trained here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from audit.cam import grad_cam
from audit.sanity import edge_explainer, randomisation_units, reinit_module, sanity_check


def blobs(n: int, seed: int, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 1: a bright Gaussian blob somewhere in noise; class 0: noise only (1×size×size)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    cy = torch.randint(4, size - 4, (n,), generator=g).float()
    cx = torch.randint(4, size - 4, (n,), generator=g).float()
    blob = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 8) * y[:, None, None]
    return (0.3 * torch.randn(n, 1, size, size, generator=g) + 2 * blob[:, None]), y


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    m = Tiny()
    x, y = blobs(256, 0)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, len(y), 32):
            loss = nn.functional.cross_entropy(m(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    xt, yt = blobs(16, 1)
    with torch.no_grad():
        assert (m(xt).argmax(1) == yt).float().mean() >= 0.9  # the task is learned
    return m, xt


@pytest.fixture(scope="module")
def report(trained):
    m, x = trained
    return sanity_check(m, "block", x, seed=0, n_boot=200)


def _numbers(rep: dict) -> list:
    return [(s["mode"], s["unit"], s["spearman"], s["ssim"]) for s in rep["steps"]]


def test_units_and_cascade_order(trained, report):
    m, x = trained
    assert randomisation_units(m, "block", x) == ["stem.0", "stem.1", "block.0", "block.1", "fc"]
    rep = report
    casc = [s for s in rep["steps"] if s["mode"] == "cascade"]
    assert [s["unit"] for s in casc] == ["fc", "block.1", "block.0", "stem.1", "stem.0"]  # head first
    assert [s["position"] for s in casc] == ["after", "target", "target", "before", "before"]
    assert casc[-1]["randomised"] == ["fc", "block.1", "block.0", "stem.1", "stem.0"]
    ind = [s for s in rep["steps"] if s["mode"] == "independent"]
    assert all(len(s["randomised"]) == 1 for s in ind) and len(ind) == 5
    json.dumps(rep)


def test_edge_map_that_ignores_the_model_correlates_one(trained):
    m, x = trained
    rep = sanity_check(m, "block", x, explainer=edge_explainer, n_boot=100)
    assert rep["gate_value"] == pytest.approx(1.0, abs=1e-6)
    assert all(s["spearman"]["value"] > 0.999 and s["ssim"]["value"] > 0.999 for s in rep["steps"])
    assert rep["verdict"] == "fail" and "say little about" in rep["verdict_text"]


def test_gradcam_of_trained_model_fails_to_survive_randomisation(trained, report):
    m, x = trained
    rep = report
    assert rep["full_randomisation"]["spearman"]["value"] < 0.5
    assert rep["head_randomisation"]["spearman"]["value"] < 0.5     # the head alone already scrambles the map
    assert rep["verdict"] == "pass" and rep["gate_value"] < 0.5
    sp = rep["full_randomisation"]["spearman"]
    assert sp["lo"] <= sp["value"] <= sp["hi"] and sp["n"] == len(x)
    # the verdict in words carries the estimate's CI and n, as every dataset-level figure does
    for datum in (f"{sp['value']:.2f}", f"{sp['lo']:.2f}, {sp['hi']:.2f}", f"n = {len(x)}", f"{rep['threshold']:.2f}"):
        assert datum in rep["verdict_text"], datum


def test_batchnorm_reinit_is_finite():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(-1.0)  # a corrupt state that NaNs in eval mode
        bn.weight.fill_(7.0)
    reinit_module(bn, seed=0)
    assert torch.equal(bn.running_var, torch.ones(4)) and torch.equal(bn.running_mean, torch.zeros(4))
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))
    out = bn.eval()(torch.randn(2, 4, 3, 3))
    assert torch.isfinite(out).all()


def test_no_nan_through_batchnorm_steps(report):
    for s in report["steps"]:
        assert s["n_nonfinite"] == 0
        assert np.isfinite(s["spearman"]["value"]) and np.isfinite(s["ssim"]["value"])


def test_callers_model_untouched_and_global_rng_kept(trained):
    m, x = trained
    m.train()  # the caller's mode must survive
    flags = [p.requires_grad for p in m.parameters()]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rng = torch.get_rng_state()
    sanity_check(m, "block", x, n_boot=50, modes=("cascade",))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m.training and all(mm.training for mm in m.modules())
    assert [p.requires_grad for p in m.parameters()] == flags
    assert torch.equal(rng, torch.get_rng_state())
    m.eval()


def test_seeded_runs_repeat(trained, report):
    m, x = trained
    again = sanity_check(m, "block", x, seed=0, n_boot=200)
    assert _numbers(again) == _numbers(report)
    other = sanity_check(m, "block", x, seed=1, n_boot=200, modes=("cascade",))
    assert _numbers(other) != _numbers(report)[:len(other["steps"])]


def test_all_zero_maps_are_excluded_and_counted(trained):
    m, x = trained

    def half_zero(model, xb, layer, target):
        cams = grad_cam(model, xb, layer, target).cams
        cams[:4] = 0.0
        return cams

    rep = sanity_check(m, "block", x, explainer=half_zero, modes=("cascade",), n_boot=50)
    assert rep["original"]["n_zero_maps"] == 4
    for s in rep["steps"]:
        assert s["n_undefined"] >= 4 and s["spearman"]["n"] == len(x) - s["n_undefined"]


def test_region_fractions_move(trained):
    m, x = trained
    mask = torch.zeros(len(x), 24, 24, dtype=torch.bool)
    mask[:, :12] = True
    rep = sanity_check(m, "block", x, masks={"top": mask}, modes=("independent",), n_boot=50)
    f0 = rep["original"]["region_fracs"]["top"]
    assert 0 <= f0 <= 1
    rf = rep["steps"][0]["region_fracs"]["top"]
    assert rf["original"] == f0 and rf["change"] == pytest.approx(rf["randomised"] - f0, abs=1e-3)


def test_bad_arguments(trained):
    m, x = trained
    with pytest.raises(ValueError, match="modes"):
        sanity_check(m, "block", x, modes=("bottom-up",))
    with pytest.raises(ValueError, match="images"):
        sanity_check(m, "block", x[0])
    from audit.errors import LayerError
    with pytest.raises(LayerError):
        sanity_check(m, "nope", x)


def test_sanity_check_runs_on_a_vision_transformer():
    """Token layers: the baseline's grid is the patch grid (4×4 for 64 px / patch 16), not the token tensor's
    shape, and the cascade re-initialises the blocks after the explained norm, then the rest."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64, depth=2,
                          embed_dim=32, num_heads=2).eval()
    x = torch.randn(6, 3, 64, 64)
    assert tuple(edge_explainer(m, x, "blocks.1.norm1", torch.zeros(6, dtype=torch.long)).shape) == (6, 4, 4)
    rep = sanity_check(m, "blocks.1.norm1", x, n_boot=50)
    assert rep["full_randomisation"]["spearman"]["value"] is not None
    assert rep["steps"][0]["randomised"][0] == "head"
    json.dumps(rep)
