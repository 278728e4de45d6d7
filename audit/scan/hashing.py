"""Perceptual hashes for near-duplicate images across splits: a 64-bit DCT hash finds candidates, a 256-bit
one confirms them (docs/scan.md; benchmarks/near_duplicates.py measures the thresholds)."""
from __future__ import annotations

import numpy as np
import torch

PHASH_BITS = 64
PHASH_SIZE = 32          # grayscale side the DCT is taken on
PHASH_LOW = 8            # low-frequency block kept (8×8 = 64 bits)
DETAIL_BITS = 256        # the confirming hash: 16×16 lowest frequencies of a 64×64 grayscale image
DETAIL_SIZE = 64
DETAIL_LOW = 16
DETAIL_THRESHOLD = 48    # of 256 bits; benchmarks/near_duplicates.py measures why (docs/scan.md)


def _dct_hash(images: np.ndarray | torch.Tensor, size: int, low: int) -> np.ndarray:
    """DCT hashes of uint8 N×H×W×3 RGB images: N×(low²/64) uint64 words, first bit the most significant.

    Per image: ITU-R 601 luminance → size×size (bilinear with antialiasing) → 2-D DCT-II (scipy.fft,
    unnormalised) → the low×low lowest frequencies (DC included) → bit = coefficient > their median, row-major
    (coefficients below 1e-9 of the largest are taken as 0, so a flat image sets the DC bit alone). Batched:
    one resize and one DCT call for the whole batch."""
    import torch.nn.functional as F
    from scipy import fft

    t = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 N×H×W×3, got shape {tuple(t.shape)}")
    words = low * low // 64
    if len(t) == 0:
        return np.zeros((0, words), np.uint64)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)
    g = (t.float() * w).sum(-1)[:, None]
    g = F.interpolate(g, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    c = fft.dct(fft.dct(g[:, 0].double().numpy(), axis=1), axis=2)
    lowc = c[:, :low, :low].reshape(len(c), low * low)
    # floating-point dust (|c| < 1e-9 of the largest) is zero, so flat images hash deterministically
    lowc = np.where(np.abs(lowc) < 1e-9 * np.abs(lowc).max(axis=1, keepdims=True), 0.0, lowc)
    bits = lowc > np.median(lowc, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").reshape(len(c), words).astype(np.uint64)


def phash_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """64-bit DCT perceptual hashes (uint64, shape (N,)) of uint8 N×H×W×3 RGB images: `_dct_hash` at 32×32,
    8×8 frequencies (the pHash of Zauner 2010 as `imagehash.phash` computes it; a flat image hashes to 1 << 63).
    It finds the candidate near-duplicate pairs; it sees the layout only (a dark lesion in the middle of skin),
    so `detail_hash_images` confirms them."""
    return _dct_hash(images, PHASH_SIZE, PHASH_LOW)[:, 0]


def detail_hash_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """256-bit DCT hashes (uint64, shape (N, 4)) of uint8 N×H×W×3 RGB images: `_dct_hash` at 64×64, 16×16
    frequencies. The mid frequencies it adds (hair, skin texture, the lesion's own pattern) tell two images with
    the same layout apart, which the 64-bit pHash cannot; a re-encoded, rescaled or re-exposed copy keeps them."""
    return _dct_hash(images, DETAIL_SIZE, DETAIL_LOW)


_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 hashes (broadcast; for multi-word hashes, sum over the last axis)."""
    x = np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return _POP8[x[..., None].view(np.uint8)].sum(-1).astype(np.int64)


def _near_pairs(h: np.ndarray, groups: np.ndarray, thr: int, cross_only: bool) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j and hamming ≤ thr (and groups[i] != groups[j] when cross_only), chunked."""
    n = len(h)
    out: list[tuple[int, int, int]] = []
    step = max(1, (1 << 22) // max(n, 1))
    for s in range(0, n, step):
        d = hamming(h[s:s + step, None], h[None, :])
        ii, jj = np.nonzero(d <= thr)
        keep = jj > ii + s
        if cross_only:
            keep &= groups[ii + s] != groups[jj]
        out += [(int(i + s), int(j), int(d[i, j])) for i, j in zip(ii[keep], jj[keep])]
    return out


def near_duplicate_pairs(h: np.ndarray, hd: np.ndarray, groups: np.ndarray, thr: int,
                         cross_only: bool) -> list[tuple[int, int, int, int]]:
    """pHash candidate pairs with their detail distance: (i, j, pHash bits, detail bits), i < j, pHash ≤ thr
    (`_near_pairs`), sorted by pHash distance then index. h: (N,) 64-bit hashes; hd: (N, 4) 256-bit ones."""
    pairs = sorted(_near_pairs(h, groups, thr, cross_only), key=lambda t: (t[2], t[0], t[1]))
    if not pairs:
        return []
    ii, jj = (np.array([p[k] for p in pairs], dtype=np.int64) for k in (0, 1))
    return [(i, j, d, int(dd)) for (i, j, d), dd in zip(pairs, hamming(hd[ii], hd[jj]).sum(-1))]
