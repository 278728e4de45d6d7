"""masks/ detectors on synthetic images with known answers: a positive scores above a negative, masks land
where the artifact was drawn, target heuristics reach a known Dice."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from audit.preprocess import InputSpec
from masks import build_regions

S = 224
SPEC = InputSpec(size=S)


def compute(name, img, **params):
    return build_regions({name: params}).compute(img, {"image_id": "t", "mask": None}, SPEC, img.shape[:2])[name]


def skin(seed=0):
    rng = np.random.default_rng(seed)
    img = np.empty((S, S, 3), np.float32)
    img[:] = (214, 168, 150)
    img += rng.normal(0, 4, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def radiograph(seed=0):
    """Gray body (bright) with two dark elliptical lung fields; returns (image, lung mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S]
    g = np.full((S, S), 40.0)
    body = ((xx - 112) / 100) ** 2 + ((yy - 125) / 115) ** 2 < 1
    g[body] = 190
    lungs = (((xx - 70) / 38) ** 2 + ((yy - 110) / 70) ** 2 < 1) | (((xx - 154) / 38) ** 2 + ((yy - 110) / 70) ** 2 < 1)
    g[lungs] = 85
    g += rng.normal(0, 5, g.shape)
    g = np.clip(g, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2), lungs


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_lesion_heuristic_finds_an_ellipse():
    img = skin()
    yy, xx = np.mgrid[0:S, 0:S]
    ell = ((xx - 120) / 45) ** 2 + ((yy - 100) / 30) ** 2 < 1
    img[ell] = (120, 80, 60)
    r = compute("lesion", img)
    assert r.mask is not None and r.present
    assert dice(r.mask, ell) >= 0.9
    neg = compute("lesion", skin(1))
    assert neg.score < r.score


def test_lung_heuristic_finds_two_dark_fields():
    img, lungs = radiograph()
    r = compute("lungs", img)
    assert r.mask is not None and r.present
    assert dice(r.mask, lungs) >= 0.85
    # both sides present
    assert r.mask[:, :112].any() and r.mask[:, 112:].any()


def _draw_ruler(img):
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    x0, y0, x1 = 40, 190, 190
    d.line([(x0, y0), (x1, y0)], fill=(40, 35, 35), width=2)
    for i, x in enumerate(range(x0, x1 + 1, 5)):
        d.line([(x, y0), (x, y0 - (9 if i % 2 == 0 else 5))], fill=(40, 35, 35), width=1)
    return np.asarray(im)


def test_ruler_scores_above_plain_skin_and_masks_it():
    pos = compute("ruler", _draw_ruler(skin()))
    neg = compute("ruler", skin())
    assert pos.score > neg.score
    assert pos.present and not neg.present
    assert pos.mask[188:192, 60:170].mean() > 0.8 and not pos.mask[:100].any()


def test_ink_violet_stroke():
    im = Image.fromarray(skin())
    ImageDraw.Draw(im).arc([40, 40, 180, 180], 200, 330, fill=(110, 60, 150), width=3)
    pos = compute("ink", np.asarray(im))
    neg = compute("ink", skin())
    assert pos.score > 10 * max(neg.score, 1e-4)
    assert pos.present and not neg.present
    assert pos.mask[40:75, 60:160].any() and not pos.mask[150:].any()


def _vignette(img):
    yy, xx = np.mgrid[0:S, 0:S]
    out = img.copy()
    out[np.hypot(yy - 111.5, xx - 111.5) > 120] = (8, 6, 6)
    return out


def test_dark_corners_vignette():
    pos = compute("dark_corners", _vignette(skin()))
    neg = compute("dark_corners", skin())
    assert pos.score > 0.5 > neg.score == 0
    assert pos.present and pos.mask[0, 0] and pos.mask[-1, -1] and not pos.mask[112, 112]


def test_patches_blue_sticker():
    img = skin()
    yy, xx = np.mgrid[0:S, 0:S]
    disk = np.hypot(yy - 60, xx - 190) < 35
    img[disk] = (30, 160, 220)
    pos = compute("patches", img)
    neg = compute("patches", skin())
    assert pos.score > neg.score and pos.present and not neg.present
    assert dice(pos.mask, disk) > 0.8


def test_gel_border_bright_rim():
    img = skin().astype(np.float32)
    b = 14
    rim = np.zeros((S, S), bool)
    rim[:b] = rim[-b:] = True
    rim[:, :b] = rim[:, -b:] = True
    img[rim] = (245, 242, 240)
    pos = compute("gel_border", img.astype(np.uint8))
    neg = compute("gel_border", skin())
    assert pos.score > neg.score and pos.present and not neg.present


def test_gel_border_circular_plate_rim_not_black_vignette():
    """The contact plate's rim: skin inside a circle, a brighter grey field outside it → detected; the same
    circle with a black field outside (dark corners, no plate rim) → not detected."""
    yy, xx = np.mgrid[0:S, 0:S]
    outside = np.hypot(yy - 111.5, xx - 111.5) > 108
    plate = skin()
    plate[outside] = (228, 226, 224)
    black = _vignette(skin())
    pos = compute("gel_border", plate)
    neg = [compute("gel_border", black), compute("gel_border", skin())]
    assert pos.present and all(not r.present for r in neg)
    assert pos.score > max(r.score for r in neg)
    assert pos.mask[0, 0] and pos.mask[-1, -1] and not pos.mask[112, 112]


def _glyph(img, text="R", xy=(12, 10), size=22, fill=250):
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap default font, draw a block letter instead
        x, y = xy
        d.rectangle([x, y, x + 3, y + 18], fill=(fill,) * 3)
        d.rectangle([x, y, x + 12, y + 3], fill=(fill,) * 3)
        d.rectangle([x + 9, y, x + 12, y + 10], fill=(fill,) * 3)
        d.rectangle([x, y + 8, x + 12, y + 11], fill=(fill,) * 3)
        d.line([(x + 5, y + 10), (x + 13, y + 18)], fill=(fill,) * 3, width=3)
        return np.asarray(im)
    d.text(xy, text, fill=(fill,) * 3, font=font)
    return np.asarray(im)


@pytest.mark.parametrize("fill, xy", [(250, (12, 10)), (5, (100, 188))])
def test_text_marker_near_the_border(fill, xy):
    """A white "R" in the dark top-left corner; a black one on the bright body near the bottom edge."""
    base, lungs = radiograph()
    pos_img = _glyph(base, fill=fill, xy=xy)
    glyph = np.abs(pos_img.astype(int) - base.astype(int)).sum(axis=2) > 60
    pos = compute("text", pos_img)
    neg = compute("text", base)
    assert pos.score > neg.score
    assert pos.present and not neg.present
    assert (pos.mask & glyph).sum() >= 0.8 * glyph.sum()
    assert not (pos.mask & lungs).any()


def test_detectors_are_scale_relative():
    """The same drawing at 2× resolution gives the same decision (sizes are relative to the side)."""
    img = _draw_ruler(skin())
    big = np.asarray(Image.fromarray(img).resize((2 * S, 2 * S), Image.BILINEAR))
    spec = InputSpec(size=2 * S)
    rs = build_regions({"ruler": {}, "dark_corners": {}})
    r_big = rs.compute(big, {"image_id": "b"}, spec, big.shape[:2])
    assert r_big["ruler"].present and not r_big["dark_corners"].present
