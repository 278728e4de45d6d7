"""Speed and scale of the audit, measured side by side in one run (ratios, never absolute targets in tests).

    python benchmarks/speed.py [--quick] [--sections cam,audit,stream] [--out benchmarks/results/speed.md]

1. Grad-CAM cost against its limit: throughput of `audit.cam.grad_cam` on the model as the audit runs it (BatchNorm
   folded, audit/fold.py) ÷ plain no-grad inference of that model, for the last block (limit 1.0) and an earlier
   layer (limit = forward ÷ (forward + the post-layer input-gradient backward), measured here), and ÷
   pytorch-grad-cam's GradCAM on the same inputs and layer, on the model as loaded and on the folded model (maps
   compared after its ReLU, min-max and resize).
2. The whole audit (`run_audit`, HAM10000 preset regions from the lesion masks) over 512 real images of
   ../shared/data/ham10000_224 ÷ a plain decode + no-grad inference pass through the same DataLoader setup.
3. Streaming: wall time and peak RSS of whole audits at N = 500, 2,000, 8,000 (shared images repeated), each in
   a fresh process.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("AUDIT_SHARED_DATA", ROOT / ".." / "shared" / "data"))


def _nograd(model, x):
    with torch.no_grad():
        return model(x)


def _post_layer_backward_s(model, x, layer, reps) -> float:
    """Median seconds of the post-layer backward alone: activations A as a leaf, d(sum of max logits)/dA."""
    from audit.cam import get_module
    store = {}

    def hook(_m, _i, o):
        a = o.detach().requires_grad_(True)
        store["A"] = a
        return a.clone()

    def bwd_only():
        out = model(x)
        t = time.perf_counter()
        torch.autograd.grad(out.max(1).values.sum(), store["A"])
        return time.perf_counter() - t

    h = get_module(model, layer).register_forward_hook(hook)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            bwd_only()
            return statistics.median(bwd_only() for _ in range(reps))
    finally:
        h.remove()
        for p in model.parameters():
            p.requires_grad_(True)


def bench_cam(batches=(32, 64), reps=3, formats=("contiguous", "channels_last")) -> list[dict]:
    """One row per model × batch × layer × memory format. The audit runs the model with each eval-mode BatchNorm
    folded into its convolution (audit/fold.py); its Grad-CAM is compared with plain inference of that same folded
    model (like for like: the limit), and with pytorch-grad-cam both on the model as loaded (what a user would
    run) and on the folded model. All on the same inputs, in one memory format, timed in interleaved rounds."""
    import timm
    import torchvision
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from audit.cam import get_module, grad_cam, minmax, upsample
    from audit.fold import fold_batchnorm
    torch.manual_seed(0)
    models = {"resnet18": (torchvision.models.resnet18(num_classes=7).eval(), ["layer4", "layer3"]),
              "efficientnet_b0": (timm.create_model("efficientnet_b0", pretrained=False, num_classes=7).eval(),
                                  ["bn2", "blocks.5"])}
    rows = []
    for name, (model0, layers), fmt in ((n, ml, f) for n, ml in models.items() for f in formats):
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        model = copy.deepcopy(model0).to(memory_format=mf)
        for b in batches:
            x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b)).contiguous(memory_format=mf)
            for layer in layers:
                folded = copy.deepcopy(model)
                fold_batchnorm(folded, x, keep=[layer])  # keeps each weight's memory format
                t_bwd = _post_layer_backward_s(folded, x, layer, reps)
                targets = [ClassifierOutputTarget(int(c)) for c in grad_cam(model, x, layer).target]
                with GradCAM(model=model, target_layers=[get_module(model, layer)]) as ref, \
                        GradCAM(model=folded, target_layers=[get_module(folded, layer)]) as ref_f:
                    # interleaved rounds, medians: drift hits all alike
                    fns = {"inf": lambda: _nograd(model, x), "inf_f": lambda: _nograd(folded, x),
                           "ours": lambda: grad_cam(folded, x, layer),
                           "ref": lambda: ref(input_tensor=x, targets=targets),
                           "ref_f": lambda: ref_f(input_tensor=x, targets=targets)}
                    times = {k: [] for k in fns}
                    for f in fns.values():
                        f()
                    for _ in range(reps):
                        for k, f in fns.items():
                            t = time.perf_counter()
                            f()
                            times[k].append(time.perf_counter() - t)
                    theirs = ref(input_tensor=x, targets=targets)
                    theirs_f = ref_f(input_tensor=x, targets=targets)
                t_inf, t_inf_f, t_ours, t_ref, t_ref_f = (statistics.median(times[k])
                                                          for k in ("inf", "inf_f", "ours", "ref", "ref_f"))
                limit = t_inf_f / (t_inf_f + t_bwd)
                ours = minmax(upsample(minmax(grad_cam(folded, x, layer).cams), 224)).numpy()
                # float64 evaluation of the model as loaded: how far each float32 map is from the exact one
                exact = grad_cam(copy.deepcopy(model0).double(), x.double(), layer,
                                 torch.tensor([t.category for t in targets])).cams
                exact = minmax(upsample(minmax(exact), 224)).float().numpy()
                rows.append({"model": name, "batch": b, "layer": layer, "format": fmt, "inference_img_s": b / t_inf,
                             "folded_inference_img_s": b / t_inf_f, "gradcam_img_s": b / t_ours,
                             "ratio_vs_inference": t_inf_f / t_ours, "limit": limit,
                             "ratio_vs_limit": (t_inf_f / t_ours) / limit,
                             "ratio_vs_pytorch_grad_cam": t_ref / t_ours,
                             "ratio_vs_pytorch_grad_cam_folded": t_ref_f / t_ours,
                             "max_abs_diff_vs_reference": float(np.abs(ours - theirs).max()),
                             "max_abs_diff_vs_reference_folded": float(np.abs(ours - theirs_f).max()),
                             "max_abs_diff_ours_vs_float64": float(np.abs(ours - exact).max()),
                             "max_abs_diff_reference_vs_float64": float(np.abs(theirs - exact).max())})
                print(rows[-1], flush=True)
    return rows


def _ham_manifest(n: int, folder: Path) -> Path:
    import pandas as pd
    lab = pd.read_csv(DATA / "ham10000_224" / "labels.csv")
    reps = int(np.ceil(n / len(lab)))
    df = pd.concat([lab] * reps, ignore_index=True).iloc[:n].copy()
    df["image_id"] = [f"{i}_{k}" for k, i in enumerate(df["image_id"])]
    df["image"] = [str(DATA / "ham10000_224" / p) for p in df["image"]]
    df["mask"] = [str(DATA / "ham10000_224" / p) for p in df["mask"]]
    df["label"] = df["dx"]
    df["split"] = "test"
    p = folder / f"ham_{n}.csv"
    df[["image_id", "image", "mask", "label", "split", "dx", "localization"]].to_csv(p, index=False)
    return p


def _run_dir(folder: Path) -> Path:
    import torchvision
    import yaml
    rd = folder / "run_resnet18"
    rd.mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), rd / "checkpoint.pt")
    (rd / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "resnet18", "source": "torchvision"},
                                                    "classes": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
                                                    "positive_class": "mel"}))
    return rd


# Peak RSS of the child itself: /proc/self/status VmHWM starts afresh at exec (getrusage's ru_maxrss is carried
# over from the forking parent on Linux, so it would report the parent's peak).
PEAK = r"""
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
"""

AUDIT_CHILD = PEAK + r"""
import json, sys, time
sys.path.insert(0, {root!r})
from audit.config import resolve_config
import audit.pipeline as pipeline
trim = [0.0]
def timed_trim(f=pipeline.release_freed_heap):  # the per-batch heap trim, timed
    t0 = time.perf_counter(); f(); trim[0] += time.perf_counter() - t0
pipeline.release_freed_heap = timed_trim
t = time.perf_counter()
res = pipeline.run_audit(resolve_config({opts!r}, {preset!r}))
print(json.dumps({{"wall_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb(), "timing": res.summary.timing,
                  "trim_s": trim[0]}}))
"""

PLAIN_CHILD = PEAK + r"""
import json, sys, time, torch
sys.path.insert(0, {root!r})
from audit.manifest import load_manifest
from audit.predict import predict_probs, prepare_model
from audit.config import resolve_config
from audit.run import load_run
t = time.perf_counter()
from audit.fold import fold_batchnorm
model, run = load_run({rd!r})
fold_batchnorm(model, torch.zeros(1, 3, run.input.size, run.input.size))  # like for like: the audit folds too
prepare_model(model, torch.device("cpu"), resolve_config({{}}).channels_last)
rows = load_manifest({manifest!r}, classes=run.classes)
cfg = resolve_config({{"batch_size": {bs}, "workers": {workers}}})
predict_probs(model, rows, run.input, torch.device("cpu"), cfg.batch_size, cfg.workers)
print(json.dumps({{"wall_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}}))
"""


def _child(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_audit(ns=(512,), workers=2, bs=32, regions=True) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rd = _run_dir(tmp)
        preset = tmp / "preset.yaml"
        preset.write_text("regions:\n  lesion: {source: file, threshold: 127}\n  border: {width: 0.08}\n"
                          if regions else "regions: {}\n")
        for n in ns:
            m = _ham_manifest(n, tmp)
            import pandas as pd
            for col in ("image", "mask"):  # warm the page cache so that neither pass pays for cold reads
                for f in pd.read_csv(m)[col].unique():
                    Path(f).read_bytes()
            plain = _child(PLAIN_CHILD.format(root=str(ROOT), rd=str(rd), manifest=str(m), bs=bs, workers=workers))
            opts = {"run_dir": str(rd), "data": str(m), "out": str(tmp / f"out_{n}"), "workers": workers,
                    "batch_size": bs, "n_boot": 200, "cache": False}
            audit = _child(AUDIT_CHILD.format(root=str(ROOT), opts=opts, preset=str(preset)))
            rows.append({"n": n, "plain_s": plain["wall_s"], "audit_s": audit["wall_s"],
                         "ratio_audit_vs_plain": audit["wall_s"] / plain["wall_s"],
                         "audit_peak_rss_mb": audit["peak_rss_mb"], "plain_peak_rss_mb": plain["peak_rss_mb"],
                         "audit_model_s": audit["timing"].get("model_s"),
                         "audit_other_s": audit["wall_s"] - audit["timing"].get("model_s", 0),
                         **{k: audit["timing"].get(k) for k in ("scoring_s", "writing_s", "decode_in_workers_s",
                                                                "regions_in_workers_s")}, "heap_trim_s": audit["trim_s"]})
            print(rows[-1], flush=True)
    return rows


def bench_procs(n=512, procs=(1, 2), bs=32) -> list[dict]:
    """Throughput of `torchrun --nproc_per_node=K cli.py audit` (K ranks share this machine's cores)."""
    rows = []
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rd = _run_dir(tmp)
        m = _ham_manifest(n, tmp)
        import pandas as pd
        for f in pd.read_csv(m)["image"].unique():
            Path(f).read_bytes()
        for k in procs:
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // k))}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}",
                   str(ROOT / "cli.py"), "audit", "--run-dir", str(rd), "--data", str(m), "--out", str(tmp / f"p{k}"),
                   "--workers", "0", "--batch-size", str(bs), "--no-cache", "--no-report", "--quiet", "--n-boot", "200"]
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t
            if r.returncode not in (0, 1):
                raise RuntimeError(r.stderr[-2000:])
            rows.append({"processes": k, "threads_each": max(1, cores // k), "n": n, "wall_s": wall,
                         "img_s": n / wall})
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch 32 only, N = 256/512/1024 for streaming")
    ap.add_argument("--sections", default="cam,audit,stream,procs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.md"))
    ap.add_argument("--reuse", help="results JSON of an earlier run (benchmarks/results/speed.json): its sections not "
                                    "listed in --sections are kept")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    secs = set(args.sections.split(","))
    res: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                            f"torch {torch.__version__}, CPU", "command": " ".join(["python", *sys.argv])}
    sections = ("cam", "audit", "stream", "procs")
    res["measured_by"] = {k: res["command"] for k in sections if k in secs}
    if args.reuse:
        old = json.loads(Path(args.reuse).read_text())
        kept = [k for k in sections if k in old and k not in secs]
        res.update({k: old[k] for k in kept})
        res["measured_by"].update({k: (old.get("measured_by") or {}).get(k, old.get("command")) for k in kept})
        res["reused"] = "; ".join(f"{k} from an earlier run (`{res['measured_by'][k]}`)" for k in kept)
    if "cam" in secs:
        res["cam"] = bench_cam(batches=(32,) if args.quick else (32, 64), reps=3 if args.quick else 5)
    if ("audit" in secs or "stream" in secs or "procs" in secs) and not (DATA / "ham10000_224").is_dir():
        print(f"skipping audit/stream/procs: {DATA / 'ham10000_224'} not found")
        secs -= {"audit", "stream", "procs"}
    if "procs" in secs:
        res["procs"] = bench_procs()
    if "audit" in secs:
        res["audit"] = bench_audit(ns=(512,))
    if "stream" in secs:
        res["stream"] = bench_audit(ns=(256, 512, 1024) if args.quick else (500, 2000, 8000))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(res))
    Path(args.out).with_suffix(".json").write_text(json.dumps(res, indent=1))
    to_readme(render(res))
    print(render(res))
    return 0


def to_readme(text: str) -> None:
    """Put the results between the speed-benchmark markers of docs/performance.md (one heading level down)."""
    readme = ROOT / "docs" / "performance.md"
    s = readme.read_text()
    a, b = "<!-- speed-benchmark:start -->", "<!-- speed-benchmark:end -->"
    if a in s and b in s:
        body = "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in text.splitlines()[1:])
        readme.write_text(s[: s.index(a) + len(a)] + "\n" + body.strip() + "\n" + s[s.index(b):])


def _default_vs_as_loaded(cam: list[dict]) -> list[str]:
    """The audit as it runs by default (channels_last) against pytorch-grad-cam on the model and inputs as a user
    loads them (torch's default NCHW layout): the two format rows of one model × batch × layer, same run."""
    by = {(r["model"], r["batch"], r["layer"], r.get("format", "contiguous")): r for r in cam}
    out = []
    for (m, b, layer, fmt), cl in by.items():
        nchw = by.get((m, b, layer, "contiguous"))
        if fmt != "channels_last" or nchw is None:
            continue
        ref_img_s = nchw["gradcam_img_s"] / nchw["ratio_vs_pytorch_grad_cam"]
        out.append(f"| {m} | {b} | {layer} | {cl['gradcam_img_s']:.1f} | {ref_img_s:.1f} | "
                   f"{cl['gradcam_img_s'] / ref_img_s:.2f} |")
    if not out:
        return []
    return ["The audit's default (BN folded, channels_last) against pytorch-grad-cam on the model and inputs as "
            "loaded (NCHW), from the rows above (measured in separate rounds of the same run):", "",
            "| model | batch | layer | audit Grad-CAM img/s | pytorch-grad-cam img/s (as loaded, NCHW) | × |",
            "|---|---|---|---|---|---|", *out, ""]


def _at_limit(r: dict) -> float:
    """pytorch-grad-cam's time ÷ the limit's time (= folded inference time ÷ limit): the best ratio possible."""
    return r["ratio_vs_pytorch_grad_cam"] * r["limit"] / r["ratio_vs_inference"]


def _g(r: dict, k: str, spec: str = ".1f") -> str:
    """r[k] formatted, or n/a where an older results file lacks it."""
    return "n/a" if r.get(k) is None else format(r[k], spec)


def _f64(r: dict) -> str:
    if "max_abs_diff_ours_vs_float64" not in r:
        return "n/a"
    return f"{r['max_abs_diff_ours_vs_float64']:.1e} / {r['max_abs_diff_reference_vs_float64']:.1e}"


def render(res: dict) -> str:
    lines = ["# Speed and scale (benchmarks/speed.py)", "", f"Machine: {res['machine']}. Command: `{res['command']}`.",
             "All figures are ratios of times measured side by side in the same run.", ""]
    if res.get("reused"):
        lines += [f"Reused: {res['reused']}.", ""]
    if res.get("cam"):
        lines += ["## Grad-CAM cost", "", "| model | batch | layer | memory format | inference img/s (as loaded) | "
                  "inference img/s (BN folded) | Grad-CAM img/s | Grad-CAM ÷ inference | limit | ÷ limit | "
                  "× pytorch-grad-cam (as loaded) | × pytorch-grad-cam (BN folded) | × pytorch-grad-cam at the limit | "
                  "max |Δ| vs reference (as loaded / BN folded) | max |Δ| from float64: ours / reference |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["cam"]:
            lines.append(f"| {r['model']} | {r['batch']} | {r['layer']} | {r.get('format', 'contiguous')} | "
                         f"{r['inference_img_s']:.1f} | {r['folded_inference_img_s']:.1f} | "
                         f"{r['gradcam_img_s']:.1f} | {r['ratio_vs_inference']:.2f} | {r['limit']:.2f} | "
                         f"{r['ratio_vs_limit']:.2f} | {r['ratio_vs_pytorch_grad_cam']:.2f} | "
                         f"{r['ratio_vs_pytorch_grad_cam_folded']:.2f} | {_at_limit(r):.2f} | "
                         f"{r['max_abs_diff_vs_reference']:.1e} / {_g(r, 'max_abs_diff_vs_reference_folded', '.1e')} | "
                         f"{_f64(r)} |")
        lines += ["", "The audit runs the model with each eval-mode BatchNorm folded into the convolution before it "
                  "(audit/fold.py, `--no-fold-bn` to turn off; outputs equal to float32 rounding) and in "
                  "channels_last unless `--no-channels-last`. Grad-CAM ÷ inference and the limit are like for like: "
                  "plain no-grad inference of the same folded model. limit: 1.0 in principle for the last block; "
                  "measured here as forward ÷ (forward + the post-layer input-gradient backward). × pytorch-grad-cam "
                  "(as loaded): its GradCAM on the model as loaded, in the same memory format, which is what a user "
                  "would otherwise run; (BN folded): on the same folded model, the algorithmic part of the speed-up "
                  "alone; at the limit: what an implementation running exactly at the limit would reach against "
                  "pytorch-grad-cam as loaded (its time × limit ÷ folded inference time), the ceiling for any "
                  "Grad-CAM on this machine. max |Δ|: our maps against pytorch-grad-cam's on the model as loaded "
                  "and on the same folded model, after its ReLU, min-max and resize; from float64: each float32 "
                  "map against the same Grad-CAM computed in "
                  "float64 on the model as loaded (the exact map up to float64 rounding), so a |Δ| vs the reference "
                  "above 1e-4 can be read as whose float32 error it is. Timings on a shared VM drift between "
                  "rounds; ratios above 1.0 × the limit are that drift.", ""]
        lines += _default_vs_as_loaded(res["cam"])
    for key, title in (("audit", "Whole audit vs plain decode + inference"), ("stream", "Streaming")):
        if res.get(key):
            lines += [f"## {title}", "", "| N | plain s | audit s | audit ÷ plain | audit model s | audit other s | "
                      "scoring s | writing s | heap trim s | decode s (workers) | regions s (workers) | "
                      "audit peak RSS MB | plain peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in res[key]:
                lines.append(f"| {r['n']} | {r['plain_s']:.1f} | {r['audit_s']:.1f} | {r['ratio_audit_vs_plain']:.2f} | "
                             f"{r['audit_model_s']:.1f} | {r['audit_other_s']:.1f} | {_g(r, 'scoring_s')} | "
                             f"{_g(r, 'writing_s')} | {_g(r, 'heap_trim_s')} | {_g(r, 'decode_in_workers_s')} | "
                             f"{_g(r, 'regions_in_workers_s')} | "
                             f"{r['audit_peak_rss_mb']:.0f} | {r['plain_peak_rss_mb']:.0f} |")
            lines.append("Decode and regions run in DataLoader workers, overlapping the model: their seconds are "
                         "CPU time summed over workers, not wall time.")
            lines.append("")
    if res.get("procs"):
        lines += ["## torchrun: 1 vs 2 processes (whole audit, 512 images, workers 0)", "",
                  "| processes | threads each | images | wall s | images/s |", "|---|---|---|---|---|"]
        for r in res["procs"]:
            lines.append(f"| {r['processes']} | {r['threads_each']} | {r['n']} | {r['wall_s']:.1f} | {r['img_s']:.1f} |")
        lines += ["", "On one 2-core machine two ranks split the same cores, so no speed-up is expected; on a "
                  "cluster each rank brings its own cores or GPU and throughput adds up (rank 0 also gathers and "
                  "writes the report).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
