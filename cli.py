#!/usr/bin/env python
"""Audit a medical image classifier for shortcuts: is its Grad-CAM evidence on the lungs or the lesion, or on
artifacts (image borders, text markers, rulers, ink, patches)? Every figure comes with n and a 95% CI.

examples:
  python cli.py demo                      synthetic data, two tiny models, no download: see what an audit shows
  python cli.py audit --run-dir runs/resnet18 --data manifest.csv --config configs/ham10000.yaml
  python cli.py COMMAND --help            a command's options

exit codes: 0 done (all gates pass, or none configured); 1 a sign-off gate failed (compare: or
inconclusive); 3 inconclusive (audit: no gate failed, but some could not be measured, see gates.undefined);
2 bad input (the message names the file, column or option).
"""
# The CLI parses, calls the library, renders, and maps the library's errors to exit codes.
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

EXIT_OK, EXIT_GATES, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE = 0, 1, 2, 3


def _verdict_exit(verdict: str | None) -> int:
    """The audit's exit code for its verdict: fail 1, inconclusive 3, pass / none 0."""
    return {"fail": EXIT_GATES, "inconclusive": EXIT_INCONCLUSIVE}.get(str(verdict), EXIT_OK)

#: Library parameter → the flag that sets it, where the flag is not `--` + the name with '-' for '_'.
FLAGS = {"preset": "--config", "channels_last": "--no-channels-last", "fold_bn": "--no-fold-bn",
         "cache": "--no-cache"}


def flag_message(e: Exception) -> str:
    """The one-line message of a library error as the CLI prints it: the parameter the error names (its `.param`,
    e.g. "batch_size") rewritten to the flag that sets it ("--batch-size"), at its first bare occurrence (not
    inside quotes, a path or a dotted key such as audit.batch_size)."""
    import re
    text = str(e)
    param = getattr(e, "param", None)
    if not param:
        return text
    flag = FLAGS.get(param, "--" + param.replace("_", "-"))
    return re.sub(rf"(?<![\w./'\"-]){re.escape(param)}(?![\w./'\"-])", flag, text, count=1)


def _csv_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    head, _, rest = __doc__.strip().partition("\n\n")
    p = argparse.ArgumentParser(prog="cli.py", description=head, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    a = sub.add_parser("audit", help="a trained model's evidence per region, gates, report.html")
    a.add_argument("--run-dir",
                   help="training run directory (config.yaml, or a timm train.py args.yaml, + checkpoint)")
    a.add_argument("--arch", help="model name when the run dir has no config (e.g. resnet18)")
    a.add_argument("--source", choices=["torchvision", "timm", "torchxrayvision"],
                   help="model library (default: torchvision)")
    a.add_argument("--classes", type=_csv_list, help="comma-separated class names in logit order")
    a.add_argument("--checkpoint", help="checkpoint file (default: found in the run dir)")
    a.add_argument("--data", help="manifest CSV (overrides the run's data.manifest)")
    a.add_argument("--split", help="split to audit, or all (default: test; every row when the manifest has no splits)")
    a.add_argument("--config", dest="preset", help="YAML preset (configs/*.yaml): regions, gates, options")
    a.add_argument("--out", help="output folder (default: reports/<run-name>/)")
    a.add_argument("--layer",
                   help="target layer module path (default: the last conv block; ViTs: the last block's input norm)")
    a.add_argument("--target", help="class explained: pred (default), true, or a class name")
    a.add_argument("--batch-size", type=int,
                   help="images per model pass (default 32; lower it if memory runs out, e.g. on a GPU)")
    a.add_argument("--device", help="cpu (default), cuda, cuda:N")
    a.add_argument("--limit", type=int, help="audit only the first N images")
    a.add_argument("--workers", type=int, help="DataLoader worker processes (0 = in the main process)")
    a.add_argument("--positive", help="safety-critical class (overrides the run's positive_class)")
    a.add_argument("--by", action="append", default=[], help="stratify statistics by this metadata column")
    a.add_argument("--seed", type=int,
                   help="seed of the bootstrap CIs, the cross-fitting folds and sampled images (default 0)")
    a.add_argument("--n-boot", type=int, help="bootstrap resamples for CIs (default 1000)")
    a.add_argument("--high-conf", type=float, help="confidence at which an error counts as high-confidence (0.9)")
    a.add_argument("--undefined-gates", choices=["fail", "inconclusive", "ignore"],
                   help="what a gate that could not be measured (e.g. an artifact in too few images) does to the "
                        "verdict (default: the preset's gates.undefined, else inconclusive, exit code 3)")
    a.add_argument("--counterfactual", action="store_true", default=None,
                   help="re-run the model with each artifact region removed (filled from its surroundings)")
    a.add_argument("--discover", action="store_true", default=None,
                   help="explanation clusters and error slices (shortcuts nobody drew a mask for)")
    a.add_argument("--sanity", action="store_true", default=None,
                   help="model-randomisation sanity check of the maps (Adebayo et al. 2018)")
    a.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision for the model (maps formed in fp32)")
    a.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                   help="keep the model in NCHW (contiguous) memory format instead of channels_last")
    a.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", default=None,
                   help="run the model as loaded instead of folding each eval-mode BatchNorm into its convolution")
    a.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="do not read or write the model-output cache (<out>/cache/)")
    a.add_argument("--findings", type=_csv_list, help="multi-label: audit only these findings (comma-separated)")
    a.add_argument("--maps", choices=["needed", "all"],
                   help="multi-label: maps for pairs positive in truth or prediction (needed, default) or all")
    a.add_argument("--uncertain", choices=["ignore", "zeros", "ones"],
                   help="multi-label: how a label -1 is read (default: the run's, else ignore = missing)")
    a.add_argument("--gallery-n", type=int, default=8, help="images per error-gallery group (default 8)")
    a.add_argument("--blocky", action="store_true", help="overlays show the raw layer grid, not the bilinear upsample")
    a.add_argument("--no-report", action="store_true", help="skip overlays, gallery, plots and report.html")
    a.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    a.add_argument("--json", action="store_true", help="print summary.json to stdout")

    d = sub.add_parser("demo", help="synthetic radiographs, two tiny models, both audited")
    d.add_argument("--out", default="reports/demo", help="demo folder (default reports/demo)")
    d.add_argument("--small", action="store_true", help="a reduced demo (for tests): fewer images and epochs")
    d.add_argument("--quiet", action="store_true")

    di = sub.add_parser("discover", help="explanation clusters and error slices of an audit")
    di.add_argument("--run-dir", help="training run directory (audited first when --out holds no audit)")
    di.add_argument("--data", help="manifest CSV (overrides the run's)")
    di.add_argument("--split", help="split to audit, or all (default: test; every row when the manifest has no splits)")
    di.add_argument("--config", dest="preset", help="YAML preset (regions give each group's evidence shares)")
    di.add_argument("--k", type=int, help="clusters per predicted class (default: eigengap)")
    di.add_argument("--out", help="audit folder (default reports/<run-name>/)")
    di.add_argument("--min-n", type=int, default=10, help="groups smaller than this are described, not ranked")
    di.add_argument("--seed", type=int, default=0)
    di.add_argument("--no-report", action="store_true",
                    help="do not re-render the audit's report.html and gallery with the discovered groups")
    di.add_argument("--quiet", action="store_true")
    di.add_argument("--json", action="store_true", help="print the discover section as JSON")

    s = sub.add_parser("scan", help="a dataset without a model: artifacts, labels, leakage")
    s.add_argument("--data", required=True, help="manifest CSV")
    s.add_argument("--config", dest="preset", required=True, help="YAML preset (configs/*.yaml): artifact regions")
    s.add_argument("--label-col", help="manifest column holding the label (overrides the preset's data.columns.label)")
    s.add_argument("--by", action="append", default=[], help="prevalence by this metadata column (repeatable)")
    s.add_argument("--id-col", help="patient/lesion id column: ids found in more than one split")
    s.add_argument("--flag-cols", type=_csv_list, default=[],
                   help="comma-separated 0/1 metadata columns scanned as artifacts")
    s.add_argument("--run-dir", help="training run: model metrics with vs without each artifact")
    s.add_argument("--positive", help="safety-critical class (default: the run's positive_class)")
    s.add_argument("--out", default="reports/scan", help="output folder (default reports/scan/)")
    s.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                   help="DataLoader worker processes (0 = in the main process; default: cores − 1, at most 4)")
    s.add_argument("--limit", type=int, help="scan only the first N images")
    s.add_argument("--phash-threshold", type=int, default=6,
                   help="near-duplicate candidate: pHash Hamming distance <= this (of 64 bits)")
    s.add_argument("--detail-threshold", type=int, default=None,
                   help="a candidate is confirmed when the 256-bit detail hash differs in <= this many bits "
                        "(default 48)")
    s.add_argument("--quiet", action="store_true", help="no progress bar and no tables")
    s.add_argument("--json", action="store_true", help="print scan.json to stdout")

    c = sub.add_parser("compare", help="a candidate model vs a baseline, paired, with gates")
    c.add_argument("audits", nargs="*", metavar="AUDIT_DIR",
                   help="two finished audit folders: BASELINE CANDIDATE (or use --run-dir twice)")
    c.add_argument("--run-dir", action="append", default=[],
                   help="twice: the baseline's then the candidate's run directory, audited first (cached)")
    c.add_argument("--data", help="manifest CSV for --run-dir audits")
    c.add_argument("--split", help="split for --run-dir audits (default: test)")
    c.add_argument("--config", dest="preset",
                   help="YAML preset: its compare.gates (margins), and for --run-dir audits its regions and options")
    c.add_argument("--limit", type=int, help="--run-dir audits: only the first N images")
    c.add_argument("--counterfactual", action="store_true", default=None, help="--run-dir audits: flip rates too")
    c.add_argument("--device", help="--run-dir audits: cpu (default), cuda, cuda:N")
    c.add_argument("--workers", type=int, help="--run-dir audits: DataLoader worker processes")
    c.add_argument("--gate", action="append", default=[], metavar="NAME=MARGIN",
                   help="non-inferiority gate, e.g. max_sensitivity_drop=0.02, max_lift_increase=0.2 (repeatable)")
    c.add_argument("--gates", help="YAML file mapping gate names to margins")
    c.add_argument("--out", help="output folder (default reports/compare_<baseline>_vs_<candidate>/)")
    c.add_argument("--n-boot", type=int, help="bootstrap resamples (default: the baseline audit's)")
    c.add_argument("--seed", type=int, help="bootstrap seed (default: the baseline audit's)")
    c.add_argument("--gallery-n", type=int, default=6, help="images per disagreement-gallery group (default 6)")
    c.add_argument("--no-report", action="store_true", help="compare.json and pairs.csv only (no html, gallery)")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--json", action="store_true", help="print compare.json to stdout")

    m = sub.add_parser("masks", help="a preset's region masks for a manifest, contact sheet")
    m.add_argument("--config", required=True, help="YAML preset (configs/*.yaml): regions and the input grid")
    m.add_argument("--data", required=True, help="manifest CSV")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--limit", type=int, help="only the first N images")
    return p


def _out_console(quiet: bool = False):
    """stdout console (audit.terminal.out_console): a terminal's width; written to a file or pipe, tables sized
    for 100 columns and lines never broken inside a phrase; colour only on a terminal."""
    from audit.terminal import out_console
    return out_console(quiet=quiet)


def _console(quiet: bool = False):
    from rich.console import Console
    return Console(stderr=True, quiet=quiet)


def _progress(console, total_label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn(total_label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=console.quiet)


def cmd_audit(args) -> int:
    from audit.config import resolve_config
    from audit.terminal import print_summary
    cli = {k: getattr(args, k) for k in ("run_dir", "arch", "source", "classes", "checkpoint", "data", "split",
                                         "out", "layer", "target", "batch_size", "device", "limit", "workers",
                                         "positive", "by", "seed", "n_boot", "high_conf", "counterfactual", "amp",
                                         "cache", "discover", "sanity", "channels_last", "fold_bn", "findings",
                                         "maps", "uncertain", "undefined_gates")}
    cfg = resolve_config(cli, args.preset)
    from audit.errors import ConfigError
    if not cfg.run_dir and not (cfg.checkpoint and cfg.arch and cfg.classes):
        raise ConfigError("audit: pass --run-dir RUN (or --checkpoint with --arch and --classes)")
    if args.gallery_n is not None and args.gallery_n < 0:  # checked before the model runs, not after
        raise ConfigError(f"--gallery-n: expected an integer ≥ 0 (images per gallery group), got {args.gallery_n}")
    rank = _init_distributed(cfg.device)
    res = _audit_with_progress(cfg, args.quiet or args.json or rank > 0)
    if rank > 0:
        return EXIT_OK
    if isinstance(res.summary, dict):  # a multi-label audit's summary is its JSON dict
        from audit.terminal import print_multilabel_summary
        from audit.report.multilabel import render_multilabel_reports
        if not args.no_report:
            render_multilabel_reports(res.out_dir, n_per_group=min(args.gallery_n, 8), blocky=args.blocky)
        if args.json:
            print(json.dumps(res.summary, indent=2))
        elif not args.quiet:
            print_multilabel_summary(res.summary, str(res.out_dir), _out_console())
        return _verdict_exit(res.summary.get("verdict"))
    if not args.no_report:
        from audit.report import render_reports
        render_reports(res.out_dir, n_per_group=args.gallery_n, blocky=args.blocky, seed=cfg.seed)
    if args.json:
        print(json.dumps(res.summary.to_json(), indent=2))
    elif not args.quiet:
        print_summary(res.summary, str(res.out_dir), _out_console())
    return _verdict_exit(res.summary.verdict)


def _init_distributed(device: str) -> int:
    """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on CPU, nccl on CUDA); returns the rank."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        import torch
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank()


def _audit_with_progress(cfg, quiet: bool):
    from audit.pipeline import run_audit
    console = _console(quiet)
    with _progress(console, "Grad-CAM") as prog:
        task = prog.add_task("audit", total=None)
        return run_audit(cfg, progress=lambda done, total: prog.update(task, completed=done, total=total))


def cmd_demo(args) -> int:
    from rich.rule import Rule

    from audit.config import resolve_config
    from audit.demo import DemoSize, prepare
    from audit.terminal import print_summary
    out = Path(args.out)
    console = _out_console(args.quiet)
    size = DemoSize(n_train=320, n_val=48, n_test=64, epochs=6, size=96) if args.small else DemoSize()
    runs = prepare(out, size, log=lambda s: console.print(s, style="dim"))
    for v, rd in runs.items():
        cfg = resolve_config({"run_dir": str(rd), "out": str(out / "reports" / v), "workers": 0,
                              "counterfactual": True,
                              "n_boot": 300 if args.small else 1000}, out / "demo_preset.yaml")
        res = _audit_with_progress(cfg, args.quiet)
        from audit.report import render_reports
        render_reports(res.out_dir, n_per_group=4 if args.small else 8, seed=cfg.seed)
        console.print(Rule(f"{v} model"))
        print_summary(res.summary, str(res.out_dir), console)
    # the closing comparison: the clean model as the candidate replacing the shortcut model, on the same images
    console.print(Rule("demo: shortcut (baseline) vs clean (candidate), paired on the test split"))
    from audit.compare import compare_audits
    from audit.compare_report import compare_renderable, write_compare
    from audit.demo import DEMO_COMPARE_GATES
    c = compare_audits(out / "reports" / "shortcut", out / "reports" / "clean", gates=DEMO_COMPARE_GATES)
    write_compare(c, out / "reports" / "compare", gallery_n=4 if args.small else 6)
    console.print(compare_renderable(c.to_dict(), str(out / "reports" / "compare")))
    return EXIT_OK


def cmd_masks(args) -> int:
    from audit.errors import ConfigError
    from audit.manifest import DataSpec, load_manifest
    from audit.scan import scan_input_spec
    from masks.export import export_masks
    from audit.config import load_preset
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit: expected a positive integer, got {args.limit}")
    preset = load_preset(args.config)
    spec = scan_input_spec(preset)
    df = load_manifest(args.data, DataSpec.from_dict(preset.get("data")), require_label=False)
    table = export_masks(preset, df, Path(args.out), spec, limit=args.limit)
    failed = int((table["status"] != "ok").sum()) if "status" in table else 0
    if len(table) and failed == len(table):
        from audit.errors import ManifestError
        raise ManifestError(f"{args.data}: none of the {failed} images could be read (first: "
                            f"{table['status'].iloc[0]}); regions.csv in {args.out}/ records each")
    note = f"; {failed} unreadable (status column of regions.csv)" if failed else ""
    _console().print(f"wrote masks for {len(table) - failed} of {len(table)} images to {args.out}/ "
                     f"(regions.csv, contact_sheet.png){note}")
    return EXIT_OK


def cmd_discover(args) -> int:
    from audit.terminal import discover_renderable
    from audit.config import resolve_config
    from audit.discover import discover, record_in_summary
    from audit.errors import ConfigError
    if not args.out and not args.run_dir:
        raise ConfigError("discover: pass --run-dir RUN or --out AUDIT_DIR (a folder holding cams.npz)")
    for opt, v in (("--k", args.k), ("--min-n", args.min_n)):  # before any audit runs
        if v is not None and v < 1:
            raise ConfigError(f"{opt}: expected a positive integer, got {v}"
                              + (" (leave --k out to choose it by the eigengap)" if opt == "--k" else ""))
    if not 0 <= args.seed < 2 ** 32:
        raise ConfigError(f"--seed: expected an integer in [0, 2^32), got {args.seed}")
    out = Path(args.out) if args.out else Path("reports") / Path(args.run_dir).name
    if not (out / "cams.npz").exists():
        if not args.run_dir:
            raise ConfigError(f"{out}: holds no audit (cams.npz); pass --run-dir to audit first")
        cfg = resolve_config({"run_dir": args.run_dir, "data": args.data, "split": args.split, "out": str(out),
                              "seed": args.seed}, args.preset)
        _audit_with_progress(cfg, args.quiet or args.json)
    res = discover(out, k=args.k, seed=args.seed, min_n=args.min_n)
    if record_in_summary(out, res.summary) is not None:
        if not args.no_report:  # the gallery and report.html show the prototypes of the top groups
            from audit.report import render_reports
            render_reports(out, seed=args.seed)
    if args.json:
        print(json.dumps(res.summary, indent=2))
    elif not args.quiet:
        con = _out_console()
        con.print(f"discover: {out}/discover.csv")
        con.print(discover_renderable(res.summary, str(out)))
    return EXIT_OK


def cmd_scan(args) -> int:
    from audit.scan import ScanConfig, prepare_scan, render_scan, run_scan
    preset, manifest, spec = prepare_scan(args.data, args.preset, label_col=args.label_col)
    cfg = ScanConfig.resolve(preset, by=args.by, id_col=args.id_col, flag_cols=args.flag_cols,
                             positive=args.positive, workers=args.workers, limit=args.limit,
                             phash_threshold=args.phash_threshold, detail_threshold=args.detail_threshold)
    console = _console(args.quiet or args.json)
    with _progress(console, "Scanning") as prog:
        task = prog.add_task("scan", total=None)
        res = run_scan(preset, manifest, Path(args.out), spec, cfg, run_dir=args.run_dir,
                       progress=lambda done, total: prog.update(task, completed=done, total=total))
    if args.json:
        print(json.dumps(res.summary, indent=2))
    elif not args.quiet:
        render_scan(res, _out_console())
    return EXIT_OK


def cmd_compare(args) -> int:
    from audit.compare import compare_audits, parse_gates, read_gates_file
    from audit.compare_report import compare_renderable, write_compare
    from audit.errors import ConfigError
    if bool(args.audits) == bool(args.run_dir) or len(args.audits or args.run_dir) != 2:
        raise ConfigError("compare: pass BASELINE_AUDIT_DIR CANDIDATE_AUDIT_DIR, or --run-dir A --run-dir B --data CSV")
    gates = {}
    if args.preset:  # the preset's compare.gates, overridden by --gates FILE, overridden by --gate NAME=MARGIN
        from audit.config import compare_gates, load_preset
        gates.update(compare_gates(load_preset(args.preset)))
    gates.update(read_gates_file(args.gates) if args.gates else {})
    gates.update(parse_gates(args.gate))
    gates = parse_gates(gates)  # checked before any audit runs
    for opt, v in (("--n-boot", args.n_boot), ("--gallery-n", args.gallery_n)):
        if v is not None and v < 0:
            raise ConfigError(f"{opt}: expected an integer ≥ 0, got {v}")
    dirs = [Path(p) for p in args.audits]
    if args.run_dir:
        from audit.config import resolve_config
        dirs = []
        names = [Path(rd).resolve().name for rd in args.run_dir]
        if names[0] == names[1]:  # two runs named alike (runs/a/model, runs/b/model): audits must not collide
            names = [f"{names[0]}_baseline", f"{names[1]}_candidate"]
        for rd, name in zip(args.run_dir, names):
            cfg = resolve_config({"run_dir": rd, "data": args.data, "split": args.split, "limit": args.limit,
                                  "counterfactual": args.counterfactual, "device": args.device,
                                  "workers": args.workers, "out": str(Path("reports") / name)}, args.preset)
            dirs.append(_audit_with_progress(cfg, args.quiet or args.json).out_dir)
    c = compare_audits(dirs[0], dirs[1], gates=gates, n_boot=args.n_boot, seed=args.seed)
    out = Path(args.out) if args.out else Path("reports") / f"compare_{dirs[0].name}_vs_{dirs[1].name}"
    write_compare(c, out, gallery_n=args.gallery_n, report=not args.no_report)
    if args.json:
        print(json.dumps(c.to_dict(), indent=2))
    elif not args.quiet:
        _out_console().print(compare_renderable(c.to_dict(), str(out)))
    return EXIT_GATES if c.verdict in ("fail", "inconclusive") else EXIT_OK


INTERRUPTED = {  # what an interrupted command leaves behind (nothing computed is lost)
    "audit": "interrupted: the rows audited so far are in <out>/per_image.partial.csv; the model outputs computed "
             "are kept in <out>/cache/, so the same command resumes without recomputing them",
    "scan": "interrupted: the rows scanned so far are in <out>/scan.partial.csv",
    "masks": "interrupted: regions.csv and the contact sheet hold the images done",
}

COMMANDS = {"audit": cmd_audit, "demo": cmd_demo, "masks": cmd_masks, "scan": cmd_scan,
            "discover": cmd_discover, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from audit.errors import AuditError
    try:
        return COMMANDS[args.command](args)
    except AuditError as e:
        print(f"error: {flag_message(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(INTERRUPTED.get(args.command, "interrupted"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    warnings.filterwarnings("default")
    sys.exit(main())
