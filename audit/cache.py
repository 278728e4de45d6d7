"""Cache of model outputs (logits, raw CAMs, embeddings, explained class) per image, written per batch.

Keyed by what decides those numbers: the checkpoint's SHA-256, the layer, the target rule, the preprocessing
and the precision. A re-run with other regions, gates or reports reads the cache instead of running the model;
an interrupted audit resumes from the shards already written (each shard is written to a temporary file and
renamed, so a kill never leaves a half-written shard).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .cam import CamBatch


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class OutputCache:
    """Shards `<root>/<key>/shard_<pid>_<n>.npz` holding image_id, logits, cam, embedding, target for one batch each.

    Only an index (image id → shard, row) is kept in memory; a cached batch is read from its shard(s) when it is
    asked for, and what a run computes is written and dropped. Memory therefore does not grow with N.
    """

    def __init__(self, root: Path, parts: dict, enabled: bool = True):
        self.enabled = enabled
        self.key = cache_key(parts)
        self.dir = Path(root) / self.key
        self.index: dict[str, tuple[Path, int]] = {}
        self.hits = 0
        self.computed = 0
        self._open: tuple[Path, dict] | None = None  # the last shard read (batches come in shard order)
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True, default=str))
        shards = sorted(self.dir.glob("shard_*.npz"))
        for f in shards:
            try:
                with np.load(f) as z:
                    ids = z["image_id"]
            except Exception:  # a damaged shard is ignored: its images are recomputed
                continue
            for j, iid in enumerate(ids):
                self.index[str(iid)] = (f, j)
        self._next = len(shards)

    def _shard(self, f: Path) -> dict:
        if self._open is None or self._open[0] != f:
            with np.load(f) as z:
                self._open = (f, {k: z[k] for k in ("logits", "cam", "embedding", "target")})
        return self._open[1]

    def get(self, ids: list[str], device) -> CamBatch | None:
        """The cached batch when every image is cached and readable, else None."""
        if not self.enabled or not ids or any(i not in self.index for i in ids):
            return None
        try:
            e = [(self._shard(f), j) for f, j in (self.index[i] for i in ids)]
        except Exception:  # a shard damaged after indexing: forget it, the batch is recomputed
            for i in ids:
                self.index.pop(i, None)
            return None
        self.hits += len(ids)

        def col(k: str) -> torch.Tensor:
            return torch.from_numpy(np.stack([z[k][j] for z, j in e])).to(device)
        return CamBatch(logits=col("logits"), cams=col("cam"), target=col("target").long(), features=col("embedding"))

    def put(self, ids: list[str], res: CamBatch) -> None:
        self.computed += len(ids)
        if not self.enabled:
            return
        arrays = {"image_id": np.array(ids, dtype=str), "logits": res.logits.cpu().numpy().astype(np.float32),
                  "cam": res.cams.cpu().numpy().astype(np.float32),
                  "embedding": res.features.cpu().numpy().astype(np.float32),
                  "target": res.target.cpu().numpy().astype(np.int64)}
        tmp = self.dir / f".tmp_{os.getpid()}_{self._next}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.dir / f"shard_{os.getpid()}_{self._next:06d}.npz")
        self._next += 1
