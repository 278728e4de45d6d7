"""Where the audit's memory grows with N: Python-traced peak (tracemalloc; numpy arrays included, torch tensors not)
of whole audits at growing N, in this process.

    python benchmarks/memory_trace.py [--ns 1000,4000] [--n-boot 1000] [--out benchmarks/results/memory_trace.md]

Same setup as benchmarks/speed.py's streaming section (random-weight ResNet-18, HAM10000 images repeated, lesion
masks from the manifest, border region). The bootstrap resamples in chunks of at most 262,144 entries
(audit/stats.py `_CHUNK_ELEMS`), maps and embeddings go to disk per batch (audit/spill.py) and the cache keeps
only an index, so what keeps growing is the per-image table. Peak RSS per N, in fresh processes, is in
benchmarks/results/speed.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    import speed
    from audit.config import resolve_config
    from audit.pipeline import run_audit

    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="1000,4000")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_trace.md"))
    args = ap.parse_args()
    if not (speed.DATA / "ham10000_224").is_dir():
        print(f"skipping: {speed.DATA / 'ham10000_224'} not found")
        return 0
    lines = ["# Python-traced peak memory of whole audits (benchmarks/memory_trace.py)", "",
             f"Command: `python {' '.join(['benchmarks/memory_trace.py', *sys.argv[1:]])}`. n_boot = {args.n_boot}.",
             "", "| N | n_boot × N | wall s | traced peak MB | traced peak KB per image |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rd = speed._run_dir(tmp)
        preset = tmp / "preset.yaml"
        preset.write_text("regions:\n  lesion: {source: file, threshold: 127}\n  border: {width: 0.08}\n")
        for n in (int(v) for v in args.ns.split(",")):
            m = speed._ham_manifest(n, tmp)
            cfg = resolve_config({"run_dir": str(rd), "data": str(m), "out": str(tmp / f"o{n}"), "workers": 2,
                                  "batch_size": 32, "n_boot": args.n_boot, "cache": False}, str(preset))
            tracemalloc.start()
            t = time.perf_counter()
            run_audit(cfg)
            wall = time.perf_counter() - t
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            lines.append(f"| {n} | {args.n_boot * n:,} | {wall:.0f} | {peak / 1e6:.1f} | {peak / 1e3 / n:.1f} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
