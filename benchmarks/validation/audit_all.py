"""Audit every trained validation run with the project's CLI (skips audits whose summary.json exists).

    python benchmarks/validation/audit_all.py [--work /work/runs/validation] [--force]

For each run directory WORK/runs/<dataset>_<arch>_<variant> that holds checkpoint.pt and verify.json (training
finished), runs

    python cli.py audit --run-dir RUN --config benchmarks/validation/presets/<dataset>_planted.yaml \
        --counterfactual --by artifact --out WORK/audits/<run name> --quiet

and, for ResNet-18, the same at `--layer layer3` (twice the map resolution of `layer4`: 6×6 at 96 px) into
WORK/audits/<run name>_layer3. Exit code 1 from the audit means a gate failed: expected for the shortcut runs,
recorded, not an error. Writes WORK/audits/commands.json (command, exit code, seconds per audit).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK = Path("/work/runs/validation")


def audits_for(run: Path) -> list[tuple[str, list[str]]]:
    dataset = run.name.split("_")[0]
    base = ["--run-dir", str(run), "--config", str((HERE / "presets" / f"{dataset}_planted.yaml").relative_to(REPO)),
            "--counterfactual", "--by", "artifact", "--quiet"]
    out = [(run.name, base)]
    if "_resnet18_" in run.name:
        out.append((f"{run.name}_layer3", base + ["--layer", "layer3"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--force", action="store_true", help="rerun audits that already have a summary.json")
    ap.add_argument("--only", default=None, help="substring of the run names to audit")
    a = ap.parse_args(argv)
    runs = sorted(p for p in (a.work / "runs").glob("*_*_*") if (p / "checkpoint.pt").exists()
                  and (p / "verify.json").exists())
    log_p = a.work / "audits" / "commands.json"
    log_p.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(log_p.read_text()) if log_p.exists() else {}
    for run in runs:
        if a.only and a.only not in run.name:
            continue
        for name, args in audits_for(run):
            out = a.work / "audits" / name
            if (out / "summary.json").exists() and not a.force and name in done:
                continue
            cmd = [sys.executable, "cli.py", "audit", *args, "--out", str(out)]
            cached = (out / "cache").is_dir() and any((out / "cache").iterdir())  # model outputs reused, not timed
            t0 = time.perf_counter()
            rc = subprocess.call(cmd, cwd=REPO)
            dt = time.perf_counter() - t0
            print(f"{name}: exit {rc} ({dt:.0f}s)", flush=True)
            done = json.loads(log_p.read_text()) if log_p.exists() else {}  # merge with concurrent writers
            done[name] = {"command": " ".join(["python", *cmd[1:]]), "exit_code": rc, "seconds": round(dt, 1),
                          "cache_reused": cached}
            log_p.write_text(json.dumps(done, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
