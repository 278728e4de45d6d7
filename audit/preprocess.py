"""The model's input geometry and normalisation, applied identically to images and to region masks.

Every image and every mask goes through one `InputSpec`: decode → RGB uint8 (H×W×3) → resize (and centre crop
when `resize="crop"`) to the model grid S×S → normalise. Masks take exactly the same geometry with nearest
neighbour, so a mask and a CAM upsampled to the model input share one grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
SCALE16 = ("max", "full", "minmax")  # InputSpec.scale16's named rules (or a bit depth 8..16)
MODES_16BIT = ("I;16", "I;16B", "I;16L", "I")  # Pillow's integer grayscale modes ("I": 32-bit, read as 16-bit data)


def _scale16_ok(v: object) -> bool:
    return v in SCALE16 or (type(v) is int and 8 <= v <= 16)


def bit_depth(mode: str | None) -> int:
    """The bits per grayscale sample of a Pillow mode as the auditor reads it: 16 (`MODES_16BIT`), 32 ("F",
    float) or 8 (everything else, colour 16-bit PNGs included: Pillow delivers them as 8 bits)."""
    return 16 if mode in MODES_16BIT else 32 if mode == "F" else 8


#: attribute → the scan.csv column holding each image's level
FORMAT_COLUMNS = {"file type": "src_format", "colour mode": "src_mode", "short side": "src_short_side",
                  "aspect": "src_aspect"}
#: upper bounds (exclusive) of the short-side tiers, in pixels
SHORT_SIDE_TIERS = (256, 512, 1024, 2048)
_MODES = {"L": "gray 8-bit", **{m: "gray 16-bit" for m in MODES_16BIT}, "F": "gray float", "1": "1-bit",
          "P": "palette", "LA": "gray + alpha", "RGB": "RGB", "RGBA": "RGBA", "CMYK": "CMYK", "YCbCr": "YCbCr"}


def mode_label(mode: str | None) -> str:
    """Pillow's mode as a reader names it: "L" → "gray 8-bit", "I;16" → "gray 16-bit"; unknown modes kept."""
    return _MODES.get(str(mode), str(mode)) if mode else "unknown"


def short_side_tier(h: int, w: int) -> str:
    """The stored image's shorter side in tiers (pixels): "<256", "256–511", "512–1023", "1024–2047", "≥2048"."""
    s, lo = min(int(h), int(w)), 0
    for hi in SHORT_SIDE_TIERS:
        if s < hi:
            return f"<{hi}" if lo == 0 else f"{lo}–{hi - 1}"
        lo = hi
    return f"≥{SHORT_SIDE_TIERS[-1]}"


def aspect_class(h: int, w: int) -> str:
    """"portrait" (width/height < 0.95), "square" (0.95–1.05) or "landscape" (> 1.05)."""
    r = int(w) / max(int(h), 1)
    return "portrait" if r < 0.95 else "landscape" if r > 1.05 else "square"


def format_record(src_hw: tuple[int, int], info: dict) -> dict:
    """The scan.csv columns of one decoded image: a DICOM's `dicom_<Keyword>` header columns (`audit.dicom`),
    then src_height, src_width, src_format, src_mode and the tiers."""
    h, w = int(src_hw[0]), int(src_hw[1])
    return {**(info.get("dicom") or {}), "src_height": h, "src_width": w, "src_format": str(info.get("format") or "unknown"),
            "src_mode": mode_label(info.get("mode")), "src_short_side": short_side_tier(h, w),
            "src_aspect": aspect_class(h, w)}


@dataclass(frozen=True)
class InputSpec:
    """How the model sees an image.

    size: side S of the square model input (pixels).
    mean, std: per-channel normalisation on [0, 1] values (length = channels).
    resize: "stretch" resizes the whole image to S×S (aspect ratio not kept, nothing lost);
            "crop" resizes the shorter side to floor(S / crop_pct) and centre-crops S×S (timm/ImageNet style:
            the same pixels as torchvision Resize + CenterCrop on a PIL image).
    crop_pct: only for resize="crop"; 1.0 crops exactly the central square.
    channels: 3 (grayscale images are replicated) or 1 (colour images converted to luminance).
    interpolation: "bilinear" (default, torchvision's) or "bicubic" (timm's default) for the image resize;
            masks are always resized with nearest neighbour.
    scale16: how a 16-bit grayscale image (PNG, TIFF) becomes 0..255 — it must match the training loader:
            "max" (default) divides by the image's own maximum (12-bit data stored in 16 bits fills the range);
            "full" divides by 65535 (torchvision `decode_png` + `to_dtype(scale=True)`, OpenCV IMREAD_ANYDEPTH
            / 65535), so a 16-bit copy of an 8-bit image (× 257) gives the 8-bit pixels; "minmax" stretches the
            image's own min..max; an integer b in 8..16 divides by 2^b − 1 (values above it are clipped).
            8-bit images are not affected. Colour 16-bit PNGs reach the auditor as 8 bits (Pillow keeps the
            high byte, i.e. "full").
    dicom_window: how a DICOM's values become 0..255 (`audit.dicom`): "header" (default: the file's VOI LUT or
            first window), "minmax", "full" (the stored bit range) or "percentile:LOW,HIGH".
    dicom_fields: the header keywords written as `dicom_<Keyword>` columns (`audit.dicom.DEFAULT_FIELDS`);
            identifying keywords are refused. Not part of the pixels, so not in `to_dict` (nor the cache key).
    """

    size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: str = "stretch"
    crop_pct: float = 1.0
    channels: int = 3
    interpolation: str = "bilinear"
    scale16: str | int = "max"
    dicom_window: str = "header"
    dicom_fields: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERP:
            raise ConfigError(f"input.interpolation: expected 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if self.resize not in ("stretch", "crop"):
            raise ConfigError(f"input.resize: expected 'stretch' or 'crop', got {self.resize!r}")
        if not (isinstance(self.size, int) and self.size > 0):
            raise ConfigError(f"input.size: expected a positive integer, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"input.channels: expected 1 or 3, got {self.channels!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"input.mean/std: expected {self.channels} values each, got {len(self.mean)} and {len(self.std)}")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"input.crop_pct: expected a value in (0, 1], got {self.crop_pct!r}")
        if not _scale16_ok(self.scale16):
            raise ConfigError(f"input.scale16: expected one of {list(SCALE16)} or a bit depth 8..16, "
                              f"got {self.scale16!r}")
        from .dicom import fields_value, window_value
        window_value(self.dicom_window)
        if self.dicom_fields is not None:
            object.__setattr__(self, "dicom_fields", fields_value(self.dicom_fields))

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "resize": self.resize,
                "crop_pct": self.crop_pct, "channels": self.channels, "interpolation": self.interpolation,
                "scale16": self.scale16, "dicom_window": self.dicom_window}


@dataclass(frozen=True)
class Geometry:
    """Where an H×W original lands on the S×S grid: resize to (rh, rw), then crop box (top, left, S, S)."""

    src_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    crop_tl: tuple[int, int] = field(default=(0, 0))
    size: int = 224


def geometry_for(src_hw: tuple[int, int], spec: InputSpec) -> Geometry:
    """The resize/crop that `spec` applies to an image of shape `src_hw` = (H, W)."""
    h, w = int(src_hw[0]), int(src_hw[1])
    s = spec.size
    if spec.resize == "stretch":
        return Geometry((h, w), (s, s), (0, 0), s)
    # exactly timm's eval transform: Resize(floor(S / crop_pct)) on the shorter side (torchvision truncates the
    # longer side), then CenterCrop(S) (offsets rounded half to even, as torchvision does)
    short = max(s, math.floor(s / spec.crop_pct))
    if h <= w:
        rh, rw = short, int(short * w / h)
    else:
        rh, rw = int(short * h / w), short
    return Geometry((h, w), (rh, rw), (int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))), s)


def _crop(a: np.ndarray, g: Geometry) -> np.ndarray:
    t, l = g.crop_tl
    return a[t:t + g.size, l:l + g.size]


def image_to_grid(img: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 H×W×3 RGB → uint8 S×S×3 on the model grid (PIL's antialiased bilinear or bicubic: what torchvision's
    Resize does to a PIL image)."""
    g = geometry_for(img.shape[:2], spec)
    pil = Image.fromarray(img)
    if (pil.height, pil.width) != g.resized_hw:
        pil = pil.resize((g.resized_hw[1], g.resized_hw[0]), _INTERP[spec.interpolation])
    return _crop(np.asarray(pil), g)


def mask_to_grid(mask: np.ndarray, spec: InputSpec, src_hw: tuple[int, int] | None = None) -> np.ndarray:
    """bool/int H×W mask → same dtype S×S, through the image's geometry with nearest neighbour.

    src_hw: the original image's (H, W) when the mask has another size (it is first resized to the image's
    size with nearest neighbour, so that the crop box is the image's own).
    """
    m = np.asarray(mask)
    dtype = m.dtype
    if src_hw is not None and tuple(m.shape[:2]) != tuple(src_hw):
        m = _nearest(m, src_hw)
    g = geometry_for(m.shape[:2], spec)
    if tuple(m.shape[:2]) != g.resized_hw:
        m = _nearest(m, g.resized_hw)
    return _crop(m, g).astype(dtype, copy=False)


def _nearest(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize by index sampling at pixel centres (exact, dtype-preserving)."""
    h, w = m.shape[:2]
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
    return m[rows][:, cols]


def scale16_value(v: object) -> str | int:
    """A YAML / CLI value of `input.scale16` as InputSpec takes it: a bit depth written as text ("12") becomes
    the int 12; anything else is passed through (InputSpec validates it)."""
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return v  # type: ignore[return-value]


def scale_16bit(a: np.ndarray, scale16: str | int = "max") -> np.ndarray:
    """A 16-bit grayscale array (any integer dtype, values ≥ 0) → uint8 by `InputSpec.scale16`'s rule: "max"
    a / max(a), "full" a / 65535, "minmax" (a − min) / (max − min), an int b: a / (2^b − 1) clipped to 1; then
    × 255 rounded. A constant image under "minmax" and an all-zero one under "max" give 0."""
    a = np.asarray(a, dtype=np.float64)
    if scale16 == "max":
        hi = float(a.max()) if a.size else 0.0
        x = a / hi if hi > 0 else np.zeros_like(a)
    elif scale16 == "full":
        x = a / 65535.0
    elif scale16 == "minmax":
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        x = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    elif _scale16_ok(scale16):
        x = a / float(2 ** scale16 - 1)  # type: ignore[operator]
    else:
        raise ValueError(f"scale16: expected one of {list(SCALE16)} or a bit depth 8..16, got {scale16!r}")
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def load_rgb(path: str | Path, scale16: str | int = "max", info: dict | None = None,
             dicom_window: str = "header", dicom_fields: tuple[str, ...] | None = None) -> np.ndarray:
    """Decode an image file to uint8 H×W×3 RGB (grayscale replicated, alpha dropped, 16-bit grayscale scaled
    by `scale16` (see `InputSpec`; default the image's maximum), 32-bit float taken as [0, 1] when it lies
    there, else stretched from its own range).
    An EXIF orientation tag is not applied, as torchvision's and timm's loaders do not apply it: the pixels are
    the stored ones, those the model was trained on and the masks were drawn on.

    info: when given, receives the file's "format" (Pillow's: "PNG", "JPEG", …) and "mode" (Pillow's: "L", "RGB",
    "I;16", …; `bit_depth` reads it).

    DICOM (`.dcm`, `.dicom`, or any file with the DICM preamble) is read by `audit.dicom.read_dicom` with
    `dicom_window` (the windowing must be the one the model was trained with) and `dicom_fields` (info["dicom"]:
    the header columns); it needs the `dicom` extra, and is refused with one line naming it otherwise."""
    with open(path, "rb") as f:
        head = f.read(132)
    from .dicom import DEFAULT_FIELDS, is_dicom, read_dicom
    if is_dicom(path, head):
        return read_dicom(path, dicom_window, info, dicom_fields or DEFAULT_FIELDS)
    with Image.open(path) as im:
        im.load()
        if info is not None:
            info.update(format=im.format, mode=im.mode)
        if im.mode in MODES_16BIT:
            a = scale_16bit(np.maximum(np.asarray(im, dtype=np.int64), 0), scale16)
            return np.repeat(a[..., None], 3, axis=2)
        if im.mode == "F":  # 32-bit float (TIFF): PIL's own conversion clips to 0..255 and gives a black image
            a = np.asarray(im, dtype=np.float64)
            if not np.isfinite(a).all():
                raise ValueError("a float image holding NaN or infinite values")
            lo, hi = float(a.min()), float(a.max())
            if not (lo >= 0.0 and hi <= 1.0):  # not already in [0, 1]: its own range is stretched to it
                a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
            return np.repeat((a * 255.0).round().astype(np.uint8)[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


def normalize(grid_imgs: np.ndarray | torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 N×S×S×3 (or S×S×3) → float32 N×C×S×S tensor, (x/255 − mean)/std."""
    t = torch.as_tensor(np.asarray(grid_imgs)) if not isinstance(grid_imgs, torch.Tensor) else grid_imgs
    if t.ndim == 3:
        t = t[None]
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    if spec.channels == 1:
        t = (0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3])
    mean = torch.tensor(spec.mean, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)
    return (t - mean) / std
