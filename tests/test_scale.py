"""Resumable, cached audits and a 2-process torchrun audit equal to a single-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.config import resolve_config
from audit.pipeline import run_audit

ROOT = Path(__file__).resolve().parents[1]


def _cfg(run, out, **kw):
    return resolve_config({"run_dir": str(run), "out": str(out), "workers": 0, "n_boot": 20, "batch_size": 2,
                           "split": "all", **kw})


def _same(a: Path, b: Path, exact: bool = True):
    """Same rows in the same order; numbers bit-identical (exact) or equal up to float32 reduction order
    (another batch composition or thread count sums in another order)."""
    pa, pb = pd.read_csv(a / "per_image.csv"), pd.read_csv(b / "per_image.csv")
    pd.testing.assert_frame_equal(pa, pb, check_exact=exact, rtol=1e-4, atol=1e-6)
    za, zb = np.load(a / "cams.npz"), np.load(b / "cams.npz")
    for k in ("image_id", "target"):
        np.testing.assert_array_equal(za[k], zb[k])
    for k in ("cam", "embedding"):
        if exact:
            np.testing.assert_array_equal(za[k], zb[k])
        else:
            np.testing.assert_allclose(za[k], zb[k], rtol=1e-4, atol=1e-6)


def test_interrupted_audit_resumes_and_equals_uninterrupted(tiny_run, tmp_path):
    ref = run_audit(_cfg(tiny_run, tmp_path / "ref", cache=False))
    assert ref.summary.cache.computed == 6 and not (tmp_path / "ref" / "cache").exists()

    def stop_after_first_batch(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(_cfg(tiny_run, tmp_path / "cut"), progress=stop_after_first_batch)
    assert not (tmp_path / "cut" / "per_image.csv").exists()
    resumed = run_audit(_cfg(tiny_run, tmp_path / "cut"))
    assert resumed.summary.cache.from_cache == 2 and resumed.summary.cache.computed == 4
    _same(tmp_path / "ref", tmp_path / "cut")
    # a re-run with other options that do not change the model outputs does not run the model again
    again = run_audit(_cfg(tiny_run, tmp_path / "cut", high_conf=0.5))
    assert again.summary.cache.from_cache == 6 and again.summary.cache.computed == 0
    assert "read from the cache" in again.summary.cache.note
    # another layer is another key: the model runs
    other = run_audit(_cfg(tiny_run, tmp_path / "cut", layer="layer3"))
    assert other.summary.cache.computed == 6


def test_torchrun_two_processes_equal_single(tiny_run, tmp_path):
    single = tmp_path / "single"
    run_audit(_cfg(tiny_run, single, cache=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "cli.py"), "audit", "--run-dir", str(tiny_run), "--out", str(tmp_path / "multi"),
           "--workers", "0", "--n-boot", "20", "--batch-size", "2", "--split", "all", "--no-cache", "--quiet",
           "--no-report"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _same(single, tmp_path / "multi", exact=False)
    s = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert s["cache"]["processes"] == 2 and s["data"]["n"] == 6


def test_channels_last_audit_equals_contiguous(tiny_run, tmp_path):
    """NHWC weights and inputs change only the order of float sums: same rows, maps equal to float32 tolerance."""
    import torch
    import torchvision

    from audit.predict import prepare_model
    m = torchvision.models.resnet18(num_classes=2)
    assert prepare_model(m, torch.device("cpu"), True).conv1.weight.is_contiguous(memory_format=torch.channels_last)
    m = prepare_model(torchvision.models.resnet18(num_classes=2), torch.device("cpu"), False)
    assert m.conv1.weight.is_contiguous()
    cl = run_audit(_cfg(tiny_run, tmp_path / "cl", cache=False))
    nchw = run_audit(_cfg(tiny_run, tmp_path / "nchw", cache=False, channels_last=False))
    assert (cl.summary.cam.memory_format, nchw.summary.cam.memory_format) == ("channels_last", "contiguous")
    _same(tmp_path / "cl", tmp_path / "nchw", exact=False)


def test_channels_last_is_part_of_the_cache_key(tiny_run, tmp_path):
    run_audit(_cfg(tiny_run, tmp_path / "o"))
    again = run_audit(_cfg(tiny_run, tmp_path / "o", channels_last=False))
    assert again.summary.cache.computed == 6


def test_cache_read_across_shards_and_a_damaged_shard_recomputed(tiny_run, tmp_path):
    """Shards hold 2 images (batch 2); a re-run with batch 3 reads batches that span two shards. A shard damaged
    after an audit is not trusted: its images are recomputed and the results are unchanged."""
    run_audit(_cfg(tiny_run, tmp_path / "ref", cache=False))
    run_audit(_cfg(tiny_run, tmp_path / "o"))
    three = run_audit(_cfg(tiny_run, tmp_path / "o", batch_size=3))
    assert three.summary.cache.from_cache == 6 and three.summary.cache.computed == 0
    _same(tmp_path / "ref", tmp_path / "o")
    shards = sorted((tmp_path / "o" / "cache").glob("*/shard_*.npz"))
    assert len(shards) == 3
    shards[1].write_bytes(shards[1].read_bytes()[:100])
    again = run_audit(_cfg(tiny_run, tmp_path / "o"))
    assert again.summary.cache.from_cache == 4 and again.summary.cache.computed == 2
    _same(tmp_path / "ref", tmp_path / "o")


def test_cache_shard_damaged_after_indexing_is_recomputed_not_fatal(tiny_run, tmp_path):
    import torch

    from audit.cache import OutputCache
    run_audit(_cfg(tiny_run, tmp_path / "o"))
    key_dir = next((tmp_path / "o" / "cache").iterdir())
    parts = json.loads((key_dir / "key.json").read_text())
    cache = OutputCache(tmp_path / "o" / "cache", parts)
    assert cache.key == key_dir.name and len(cache.index) == 6
    ids = sorted(cache.index)[:2]
    assert cache.get(ids, torch.device("cpu")).cams.shape[0] == 2
    cache._open = None
    for f in {cache.index[i][0] for i in ids}:
        f.write_bytes(b"not a zip")
    assert cache.get(ids, torch.device("cpu")) is None
    assert not any(i in cache.index for i in ids) and len(cache.index) == 4
