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
    """Shards `<root>/<key>/shard_<n>.npz` holding image_id, logits, cam, embedding, target for one batch each."""

    def __init__(self, root: Path, parts: dict, enabled: bool = True):
        self.enabled = enabled
        self.key = cache_key(parts)
        self.dir = Path(root) / self.key
        self.entries: dict[str, tuple] = {}
        self.hits = 0
        self.computed = 0
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True, default=str))
        for f in sorted(self.dir.glob("shard_*.npz")):
            try:
                z = np.load(f)
                for j, iid in enumerate(z["image_id"]):
                    self.entries[str(iid)] = (z["logits"][j], z["cam"][j], z["embedding"][j], int(z["target"][j]))
            except Exception:  # a damaged shard is ignored: its images are recomputed
                continue
        self._next = len(list(self.dir.glob("shard_*.npz")))

    def get(self, ids: list[str], device) -> CamBatch | None:
        """The cached batch when every image is cached, else None."""
        if not self.enabled or not ids or any(i not in self.entries for i in ids):
            return None
        e = [self.entries[i] for i in ids]
        self.hits += len(ids)
        return CamBatch(logits=torch.from_numpy(np.stack([x[0] for x in e])).to(device),
                        cams=torch.from_numpy(np.stack([x[1] for x in e])).to(device),
                        target=torch.tensor([x[3] for x in e], dtype=torch.long, device=device),
                        features=torch.from_numpy(np.stack([x[2] for x in e])).to(device))

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
        for j, iid in enumerate(ids):
            self.entries[iid] = (arrays["logits"][j], arrays["cam"][j], arrays["embedding"][j], int(arrays["target"][j]))
