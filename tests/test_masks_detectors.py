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


def chest(seed=0):
    """Anatomically shaped lung fields (polygons: apex near the midline, straight mediastinal edge, rounded
    chest wall, lateral costophrenic angle lower than the medial base) in a bright body, soft edges, noise."""
    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S]
    g = np.full((S, S), 35.0)
    g[((xx - 112) / 104) ** 2 + ((yy - 130) / 125) ** 2 < 1] = 185
    right = [(88, 28), (72, 26), (52, 40), (36, 70), (26, 110), (22, 150), (20, 186), (40, 178), (62, 166),
             (84, 160), (96, 156), (98, 100), (96, 48)]  # image-left lung (patient's right)
    im = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(im)
    d.polygon(right, fill=255)
    d.polygon([(S - 1 - x, y) for x, y in right], fill=255)
    lungs = np.asarray(im) > 127
    g[lungs] = 80
    g = np.asarray(Image.fromarray(g.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5)), float)
    g = np.clip(g + rng.normal(0, 6, g.shape), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2), lungs


def test_lung_heuristic_follows_anatomical_fields(monkeypatch):
    """Lung-shaped fields (not drawn from the template family): Dice >= 0.9; the refinement of the fitted
    templates towards the field edges beats the bare templates."""
    import masks.detect_cxr as dc

    img, lungs = chest()
    r = compute("lungs", img)
    assert r.present and r.score > 0
    refined = dice(r.mask, lungs)
    assert refined >= 0.9
    monkeypatch.setattr(dc, "_LUNG_PRIOR", 1e6)  # prior dominates: the bare template
    bare = dice(compute("lungs", img).mask, lungs)
    assert refined > bare + 0.01


def test_lung_heuristic_finds_nothing_on_a_flat_image():
    flat = np.full((S, S, 3), 128, np.uint8)
    r = compute("lungs", flat)
    assert r.mask is None and not r.present


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


def test_ink_thin_circle_around_a_lesion_and_a_blue_line():
    """A 2-px violet circle drawn round a brown lesion is found on the circle, not on the lesion; so is a
    thin blue pen line."""
    im = Image.fromarray(skin(2))
    d = ImageDraw.Draw(im)
    d.ellipse([82, 87, 142, 137], fill=(120, 80, 60))
    d.ellipse([42, 42, 182, 182], outline=(110, 60, 150), width=2)
    r = compute("ink", np.asarray(im))
    yy, xx = np.mgrid[0:S, 0:S]
    ring = np.abs(np.hypot(yy - 112, xx - 112) - 69) <= 3
    assert r.present and r.mask is not None
    assert (r.mask & ring).sum() > 0.7 * ring.sum() and not r.mask[95:130, 95:130].any()
    im = Image.fromarray(skin(3))
    ImageDraw.Draw(im).line([(30, 200), (200, 170)], fill=(50, 80, 170), width=2)
    assert compute("ink", np.asarray(im)).present


def test_ink_ignores_stickers_hair_and_red_structures():
    """Known non-ink: a blue and a cyan sticker; grey and dark hairs, red vessels and a red lesion on pale skin
    (they absorb blue at least as much as a pen dye would, or lose red far less than green)."""
    yy, xx = np.mgrid[0:S, 0:S]
    img = skin()
    img[np.hypot(yy - 60, xx - 190) < 35] = (30, 160, 220)
    img[np.hypot(yy - 160, xx - 50) < 40] = (40, 90, 200)
    r = compute("ink", img)
    assert not r.present and r.score == 0
    rng = np.random.default_rng(0)
    pale = np.clip(np.array([232, 208, 198], np.float32) + rng.normal(0, 4, (S, S, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(pale)
    d = ImageDraw.Draw(im)
    for colour in ((150, 150, 150), (60, 45, 40), (200, 90, 110)):  # grey hair, dark hair, vessels
        for _ in range(6):
            x0, y0, x1, y1 = (int(v) for v in rng.integers(0, S, 4))
            d.line([(x0, y0), (x1, y1)], fill=colour, width=2)
    d.ellipse([80, 80, 140, 130], fill=(170, 60, 90))
    r = compute("ink", np.asarray(im))
    assert not r.present


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


def test_dark_corners_small_corner_triangle_but_not_hairs():
    """A small black triangle filling one corner triangle scores exactly 1/4 (one of four corners all dark) and
    is flagged, its mask the dark triangle; a dark hair through one corner triangle, and hairs passing near all
    four corners, are not flagged."""
    yy, xx = np.mgrid[0:S, 0:S]
    img = skin()
    img[xx + yy < 20] = (8, 6, 6)   # covers the corner triangle (legs round(0.06 * 224) = 13) entirely
    r = compute("dark_corners", img)
    assert r.score == 0.25 and r.present and r.mask[0, 0] and not r.mask[-1, -1] and not r.mask[112, 112]
    im = Image.fromarray(skin())
    d = ImageDraw.Draw(im)
    d.line([(0, 10), (10, 0)], fill=(30, 25, 25), width=2)            # through the top-left triangle
    one = compute("dark_corners", np.asarray(im))
    assert one.score < 0.02 and not one.present
    for a, b in (((0, 40), (60, 0)), ((S, 30), (170, 0)), ((0, 190), (40, S)), ((S, 200), (190, S))):
        d.line([a, b], fill=(30, 25, 25), width=2)
    assert not compute("dark_corners", np.asarray(im)).present


def test_dark_corners_mask_stays_in_the_corner_zone():
    """A dark lesion reaching the top-left corner scores like a dark corner, but only its part outside 0.9 × the
    inscribed circle is marked: the rest of the lesion is not artifact."""
    img = skin()
    yy, xx = np.mgrid[0:S, 0:S]
    img[np.hypot(yy - 50, xx - 50) < 75] = (70, 40, 30)
    r = compute("dark_corners", img)
    assert r.present and r.score == 0.25
    assert r.mask[0, 0] and not r.mask[50, 50] and not r.mask[100, 100]
    r_in = np.hypot(yy - 111.5, xx - 111.5) / (S / 2)
    assert r.mask.any() and (r_in[r.mask] > 0.9).all()


def test_dark_corners_mild_vignette_relative_to_the_field():
    """Corners at 40 % of the field's brightness (a mild vignette, not black) are flagged: darkness is relative
    to the central field, so the same picture 3× darker overall scores the same."""
    yy, xx = np.mgrid[0:S, 0:S]
    img = skin().astype(np.float32)
    img[np.hypot(yy - 111.5, xx - 111.5) > 125] *= 0.4
    r = compute("dark_corners", img.astype(np.uint8))
    assert r.present and r.score == 1.0   # every corner triangle lies outside the radius-125 circle
    dim = compute("dark_corners", (img / 3).astype(np.uint8))
    assert dim.present and abs(dim.score - r.score) < 0.05


def test_patches_blue_sticker():
    img = skin()
    yy, xx = np.mgrid[0:S, 0:S]
    disk = np.hypot(yy - 60, xx - 190) < 35
    img[disk] = (30, 160, 220)
    pos = compute("patches", img)
    neg = compute("patches", skin())
    assert pos.score > neg.score and pos.present and not neg.present
    assert dice(pos.mask, disk) > 0.8


def test_patches_salmon_sticker_and_not_a_colour_cast():
    """A salmon sticker (a skin-like hue at moderate saturation, which a saturation-and-hue rule misses) is found
    and outlined; a picture with a strong blue cast and a brown lesion is no sticker, because colour is judged
    against the image's own skin (a saturation-and-hue rule marks the whole picture); the same salmon colour as
    a centred blob is taken for the lesion."""
    yy, xx = np.mgrid[0:S, 0:S]
    img = skin()
    disk = np.hypot(yy - 170, xx - 180) < 38
    img[disk] = (250, 120, 90)
    r = compute("patches", img)
    assert r.present and dice(r.mask, disk) > 0.8 and abs(r.score - disk.mean()) < 0.02
    lesion = np.hypot(yy - 112, xx - 112) < 30   # the same flat colour, centred: a smooth vascular lesion
    centred = skin()
    centred[lesion] = (250, 120, 90)
    assert not compute("patches", centred).present
    cast = skin().astype(np.float32) * np.array([0.5, 0.85, 1.2], np.float32)
    cast[np.hypot(yy - 112, xx - 112) < 40] *= 0.55
    assert not compute("patches", cast.clip(0, 255).astype(np.uint8)).present


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


def test_auroc_ceiling_of_the_benchmark_matches_the_best_reranking():
    """benchmarks/masks_quality.py states the highest AUROC reachable while the positives scoring 0 stay at 0."""
    import sys
    from pathlib import Path

    from sklearn.metrics import roc_auc_score
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from masks_quality import auroc_ceiling
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = np.r_[np.ones(7, int), np.zeros(11, int)]
        s = np.where(rng.random(18) < 0.5, 0.0, rng.random(18))
        best = np.where((y == 1) & (s > 0), 2.0, s)  # every positive that scores > 0 above every negative
        assert auroc_ceiling(y, s) == pytest.approx(roc_auc_score(y, best))
        assert auroc_ceiling(y, s) >= roc_auc_score(y, s) - 1e-12


# --------------------------------------------------------------------------------- surgical-marker strokes (#27)

def derm_scene(seed=0, n=S):
    """Skin with smooth shading and noise, a textured brown lesion ellipse in the centre and eight dark hairs
    (2 px at 224); returns (image uint8 n×n×3, lesion mask, hair mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    img = np.empty((n, n, 3), np.float32)
    img[:] = (214, 168, 150)
    img *= (1 + 0.05 * np.sin(3 * xx + 2 * yy))[..., None]
    img += rng.normal(0, 3, img.shape)
    lesion = ((xx - 0.5) / 0.17) ** 2 + ((yy - 0.5) / 0.13) ** 2 < 1
    img[lesion] = np.array([125, 82, 60]) + rng.normal(0, 8, (int(lesion.sum()), 3))
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    hair_im = Image.new("L", (n, n), 0)
    for d in (ImageDraw.Draw(im), ImageDraw.Draw(hair_im)):
        hr = np.random.default_rng(seed + 100)
        for _ in range(8):
            x0, y0, x1, y1 = (float(v) for v in hr.uniform(0, n, 4))
            xm, ym = (x0 + x1) / 2 + hr.normal(0, 0.05 * n), (y0 + y1) / 2 + hr.normal(0, 0.05 * n)
            fill = (60, 45, 40) if d.im.mode == "RGB" else 255
            d.line([(x0, y0), (xm, ym), (x1, y1)], fill=fill, width=max(1, round(2 * n / S)))
    return np.asarray(im), lesion, np.asarray(hair_im) > 0


@pytest.mark.parametrize("colour", ["purple", "blue", "black"])
@pytest.mark.parametrize("shape, width", [("curve", 14), ("line", 8), ("circle", 12), ("dots", 16)])
def test_ink_finds_marker_strokes_not_the_lesion_or_hair(colour, shape, width):
    """A marker stroke drawn on a skin + lesion + hair scene (masks/synth_ink.py) is found: ≥ 90 % of its pixels
    inside the ink mask, and the mask holds nothing of the lesion nor of the hairs away from the stroke; the
    same scene without the stroke is no ink (score 0: neither the faint-dye nor the stroke evidence)."""
    from masks.synth_ink import draw_stroke

    img, lesion, hair = derm_scene(1)
    st = draw_stroke(img, lesion, np.random.default_rng(7), width, colour, shape)
    assert st.shape == shape
    r = compute("ink", st.image)
    assert r.present and r.mask is not None
    assert (r.mask & st.mask).sum() >= 0.9 * st.mask.sum()
    assert not (r.mask & lesion).any()
    from scipy import ndimage as ndi
    far = hair & ~ndi.binary_dilation(st.mask, iterations=8)
    assert not (r.mask & far).any()
    neg = compute("ink", img)
    assert not neg.present and neg.score == 0


@pytest.mark.parametrize("n", [96, 128, 448])
def test_ink_strokes_at_other_grids(n):
    """The same kind of stroke, sized relative to the side (12 px at 224), is found at 96, 128 and 448 px and the
    clean scene is not flagged."""
    from masks.synth_ink import draw_stroke

    img, lesion, _ = derm_scene(2, n)
    st = draw_stroke(img, lesion, np.random.default_rng(3), 12 * n / S, "purple", "curve")
    spec = InputSpec(size=n)
    rs = build_regions({"ink": {}})
    pos = rs.compute(st.image, {"image_id": "p"}, spec, (n, n))["ink"]
    neg = rs.compute(img, {"image_id": "n"}, spec, (n, n))["ink"]
    assert pos.present and (pos.mask & st.mask).sum() >= 0.9 * st.mask.sum()
    assert not neg.present


def test_ink_stroke_width_rule_separates_hair_from_marker():
    """Known widths: black lines of 2 px (hair) are not strokes, a black line of 8 px at 224 is; a black disk of
    60 px (wider than 14 % of the side) away from the centre is no dot; a dark violet dot of 16 px is."""
    from masks.detect_derm import ink_strokes

    base = skin(4)
    im = Image.fromarray(base)
    d = ImageDraw.Draw(im)
    for y in (30, 60, 90):
        d.line([(20, y), (200, y + 20)], fill=(35, 30, 30), width=2)
    assert not ink_strokes(np.asarray(im)).any()
    d.line([(30, 190), (190, 190)], fill=(35, 30, 30), width=8)  # rows 186-193
    found = ink_strokes(np.asarray(im))
    assert found[187:193, 40:180].mean() > 0.9 and not found[:120].any()
    big = Image.fromarray(base)
    ImageDraw.Draw(big).ellipse([140, 20, 200, 80], fill=(35, 30, 30))
    assert not ink_strokes(np.asarray(big)).any()
    dot = Image.fromarray(base)
    d = ImageDraw.Draw(dot)
    d.ellipse([82, 87, 142, 137], fill=(120, 80, 60))  # the lesion (without one, the dot is the darkest blob)
    d.ellipse([170, 30, 186, 46], fill=(60, 30, 90))
    assert ink_strokes(np.asarray(dot))[38, 178]


def test_ink_small_dark_centred_lesion_is_no_dot():
    """A small (20 px) dark round lesion in the centre of the picture is not an ink dot."""
    img = skin(5)
    yy, xx = np.mgrid[0:S, 0:S]
    img[np.hypot(yy - 112, xx - 110) < 10] = (45, 35, 38)
    assert not compute("ink", img).present


def test_patches_does_not_claim_a_marker_stroke_but_finds_a_sticker():
    """A wide (16 px) purple marker curve is no patch; with a round blue sticker added, patches outlines the
    sticker only (Dice > 0.8 with the disk) and ink keeps the stroke."""
    from masks.synth_ink import draw_stroke

    img, lesion, _ = derm_scene(3)
    st = draw_stroke(img, lesion, np.random.default_rng(11), 16, "purple", "curve")
    assert not compute("patches", st.image).present
    yy, xx = np.mgrid[0:S, 0:S]
    disk = np.hypot(yy - 190, xx - 190) < 26
    assert not (disk & ndimage_dilate(st.mask, 6)).any()
    both = st.image.copy()
    both[disk] = (30, 160, 220)
    p = compute("patches", both)
    assert p.present and dice(p.mask, disk) > 0.8 and not (p.mask & st.mask).any()
    i = compute("ink", both)
    assert i.present and (i.mask & st.mask).sum() >= 0.9 * st.mask.sum()


def ndimage_dilate(m, k):
    from scipy import ndimage as ndi
    return ndi.binary_dilation(m, iterations=k)


def test_not_strokes_known_answers():
    """_not_strokes: a 16 × 120 bar (area / largest inscribed disk = 1920 / (π 8²) = 9.5 > 4.5) is dropped; a
    disk of radius 30 (ratio 1) is kept; a 40 × 120 bar (ratio 4800 / (π 20²) = 3.8) is kept; a 30 × 200 bar
    (ratio 8.5, but wider than 11 % of 224 = 24.6 px) is kept; a disk that ink claims is dropped."""
    from masks.detect_derm import _not_strokes

    m = np.zeros((S, S), bool)
    m[10:26, 20:140] = True           # thin bar
    yy, xx = np.mgrid[0:S, 0:S]
    m |= np.hypot(yy - 150, xx - 60) <= 30
    m[60:100, 150:220] = True          # 40 × 70 block
    keep = _not_strokes(m, np.zeros_like(m), 4.5, 0.5, 0.11)
    assert not keep[18, 80] and keep[150, 60] and keep[80, 180]
    wide = np.zeros((S, S), bool)
    wide[100:130, 10:210] = True
    assert _not_strokes(wide, np.zeros_like(wide), 4.5, 0.5, 0.11)[115, 100]
    claimed = np.hypot(yy - 150, xx - 60) <= 30
    assert not _not_strokes(m, claimed, 4.5, 0.5, 0.11)[150, 60]


def test_synth_ink_generator_is_seeded_and_keeps_off_the_lesion():
    """draw_stroke: the same seed gives the same image; the stroke keeps 4 % of the side off the lesion; its
    width (2 × the distance transform's median on the skeleton − 1) is the width asked for within 2 px; the dye
    darkens green most for purple and red most for blue; bad names raise ValueError."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    from masks.synth_ink import draw_stroke

    img, lesion, _ = derm_scene(4)
    a = draw_stroke(img, lesion, np.random.default_rng(5), 12, "purple", "line")
    b = draw_stroke(img, lesion, np.random.default_rng(5), 12, "purple", "line")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not (a.mask & ndi.binary_dilation(lesion, iterations=round(0.04 * S))).any()
    dt = ndi.distance_transform_edt(a.mask)
    w = 2 * np.median(dt[skeletonize(a.mask)]) - 1
    assert abs(w - 12) <= 2
    loss = np.log(img[a.mask].astype(float) + 1).mean(0) - np.log(a.image[a.mask].astype(float) + 1).mean(0)
    assert loss[1] > loss[0] > loss[2]          # purple: green lost most, blue least
    c = draw_stroke(img, lesion, np.random.default_rng(5), 12, "blue", "line")
    loss = np.log(img[c.mask].astype(float) + 1).mean(0) - np.log(c.image[c.mask].astype(float) + 1).mean(0)
    assert loss[0] > loss[1] > loss[2]          # blue: red lost most
    with pytest.raises(ValueError, match="colour"):
        draw_stroke(img, lesion, np.random.default_rng(0), 10, "green")
    with pytest.raises(ValueError, match="shape"):
        draw_stroke(img, lesion, np.random.default_rng(0), 10, "blue", "spiral")


def test_label_median_matches_known_values():
    """_label_median: per-label medians by hand — label 1: [3, 1, 2] → 2; label 2: [4, 10] → 7; label 3 empty → 0."""
    from masks.detect_derm import _label_median

    labels = np.array([1, 2, 1, 1, 2])
    values = np.array([3.0, 4.0, 1.0, 2.0, 10.0])
    assert _label_median(labels, values, 3).tolist() == [2.0, 7.0, 0.0]
