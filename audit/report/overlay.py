"""Grad-CAM overlays for reports: the model-grid image, the CAM (jet colormap), region outlines and a caption strip.

The CAM is min-maxed per image *for display only* (the audit's numbers never see this scaling; see
`audit.cam.minmax`). Colours are RGB throughout (matplotlib's jet: red = most evidence, dark blue = none), never
OpenCV's BGR. Target regions are outlined in green, artifact regions in magenta.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from audit.cam import minmax, upsample

TARGET_RGB = (0, 230, 0)
ARTIFACT_RGB = (255, 0, 255)
OUTLINE_RGB = {"target": TARGET_RGB, "artifact": ARTIFACT_RGB}
CAPTION_BG = (255, 255, 255)
CAPTION_FG = (20, 20, 20)
MIN_DISPLAY = 224  # grids smaller than this are enlarged (nearest neighbour, integer factor) for legibility

__all__ = ["overlay_image", "display_cam", "jet_rgb", "outline", "TARGET_RGB", "ARTIFACT_RGB"]


def jet_rgb(x: np.ndarray) -> np.ndarray:
    """float H×W in [0, 1] → uint8 H×W×3 RGB through matplotlib's jet colormap (0 → dark blue, 1 → dark red)."""
    from matplotlib import colormaps
    rgba = colormaps["jet"](np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def display_cam(cam_hw: np.ndarray, size: int, blocky: bool = False) -> np.ndarray | None:
    """Raw h×w CAM → float32 S×S in [0, 1] for display, or None when the map has no positive evidence.

    blocky=False: bilinear (align_corners=False) upsampling with `audit.cam.upsample`, exactly what the audit
    scores against the masks. blocky=True: nearest-neighbour, showing the raw layer grid: each cell of an h×w map
    summarises an (S/h)×(S/w) block of input pixels (~32×32 pixels per cell of a 7×7 map at 224 px), which is the
    true spatial resolution of the evidence; the smooth bilinear picture suggests more precision than there is.
    Negative values are clipped to 0 in both modes (the bilinear path already does so).
    """
    cam = np.asarray(cam_hw, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam_hw: expected a 2-D h×w map, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    t = torch.from_numpy(cam)[None]
    up = upsample(t, size, mode="nearest" if blocky else "bilinear").clamp_min(0)
    if float(up.max()) <= 0.0:
        return None
    return minmax(up)[0].numpy()


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """bool H×W → bool H×W, the mask's inner boundary `width` pixels thick (4-neighbour erosion)."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    for _ in range(max(1, int(width))):
        p = np.pad(inner, 1, mode="constant", constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy wrap to `width` pixels, breaking preferably between " · " fields, else between words."""
    lines: list[str] = []
    for para in text.split("\n"):
        cur = ""
        for field in para.split(" · "):
            cand = field if not cur else f"{cur} · {field}"
            if draw.textlength(cand, font=font) <= width:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            cur = ""
            for w in field.split(" "):
                cand = w if not cur else f"{cur} {w}"
                if draw.textlength(cand, font=font) <= width or not cur:
                    cur = cand
                else:
                    lines.append(cur)
                    cur = w
        lines.append(cur)
    return lines


def overlay_image(grid_img: np.ndarray, cam_hw: np.ndarray, masks: Mapping[str, np.ndarray | None] | None = None,
                  kinds: Mapping[str, str] | None = None, caption: str = "", blocky: bool = False,
                  alpha: float = 0.45) -> Image.Image:
    """One Grad-CAM overlay as a PIL RGB image: picture on top, caption strip below.

    grid_img: uint8 S×S×3 RGB, the image on the model grid (`audit.preprocess.image_to_grid`).
    cam_hw: float h×w, the raw Grad-CAM at layer resolution (a row of cams.npz's `cam`).
    masks: region name → bool S×S mask on the same grid (None = region missing, not drawn).
    kinds: region name → "target" (outlined green) | "artifact" (outlined magenta); unknown names are not drawn.
    caption: text of the strip under the picture (wrapped; "" = no strip).
    blocky: show the raw layer grid (nearest neighbour) instead of the bilinear upsampling (see `display_cam`).
    alpha: weight of the heat map in the blend, in [0, 1].
    Grids under 224 px are enlarged by an integer factor (nearest neighbour), outlines drawn at display size.
    A CAM with no positive value is not drawn (the caption says so).

    Raises ValueError / TypeError naming the argument for a wrongly shaped or typed input.

    Example::

        im = overlay_image(grid, cams[i], {"lungs": m}, {"lungs": "target"}, "Pred opacity (0.93) · True clear")
        im.save("overlay.png")
    """
    img = np.asarray(grid_img)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"grid_img: expected an S×S×3 RGB array, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise TypeError(f"grid_img: expected dtype uint8, got {img.dtype} (use audit.preprocess.image_to_grid)")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha!r}")
    s = img.shape[0]
    heat = display_cam(cam_hw, s, blocky=blocky)
    k = max(1, -(-MIN_DISPLAY // s))
    big = np.repeat(np.repeat(img, k, 0), k, 1).astype(np.float32)
    if heat is not None:
        hk = np.repeat(np.repeat(heat, k, 0), k, 1)
        big = (1.0 - alpha) * big + alpha * jet_rgb(hk).astype(np.float32)
    out = np.clip(big + 0.5, 0, 255).astype(np.uint8)
    width = 1 if s * k < 300 else 2
    for name, m in (masks or {}).items():
        colour = OUTLINE_RGB.get((kinds or {}).get(name, ""))
        if m is None or colour is None:
            continue
        m = np.asarray(m, dtype=bool)
        if m.shape != (s, s):
            raise ValueError(f"masks[{name!r}]: expected a bool {s}×{s} mask on the image grid, got shape {m.shape}")
        out[outline(np.repeat(np.repeat(m, k, 0), k, 1), width)] = colour
    pic = Image.fromarray(out, "RGB")
    text = caption if heat is not None else (caption + ("\n" if caption else "") + "(CAM all zero: no heat drawn)")
    if not text:
        return pic
    font = _font(13)
    draw = ImageDraw.Draw(pic)
    lines = _wrap(draw, text, font, pic.width - 8)
    line_h = 17
    full = Image.new("RGB", (pic.width, pic.height + 6 + line_h * len(lines)), CAPTION_BG)
    full.paste(pic, (0, 0))
    d = ImageDraw.Draw(full)
    for i, line in enumerate(lines):
        d.text((4, pic.height + 3 + i * line_h), line, fill=CAPTION_FG, font=font)
    return full
