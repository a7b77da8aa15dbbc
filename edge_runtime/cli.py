"""`edge-predict`: classify photos, folders or a test list on the device (no TensorFlow)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .errors import UserError
from .image import is_image_file


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("deploy", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--dir", "folder", type=click.Path(file_okay=False), help="Classify every image under DIR.")
@click.option("--eval", "eval_src", type=click.Path(),
              help="Accuracy on a folder-per-class DIR or a split list (RUN/split/test.tsv).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where the photos of a split list live now.")
@click.option("--precision", help="Which artifact of the deploy folder (default: the manifest's).")
@click.option("--top-k", default=3, show_default=True)
@click.option("--threshold", default=0.0, show_default=True, help="Hide classes scoring below this.")
@click.option("--threads", type=int, help="Interpreter threads (default: the runtime's choice).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--no-verify", is_flag=True, help="Skip the artifact's sha256 check against the manifest.")
def cli(deploy, images, folder, eval_src, data_root, precision, top_k, threshold, threads, as_json, no_verify):
    """Classify IMAGES with the model in DEPLOY (the converter's folder, or a .tflite file)."""
    from .classifier import Classifier

    try:
        clf = Classifier(deploy, threads=threads, precision=precision, verify=not no_verify)
        if eval_src:
            sys.exit(_eval(clf, Path(eval_src), data_root, as_json))
        files = [Path(p) for p in images]
        if folder:
            files += sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise UserError("nothing to classify: give IMAGE paths, --dir DIR or --eval DIR")
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    failed = 0
    for f in files:
        try:
            t = time.perf_counter()
            top = clf.classify(f, top_k)
            ms = (time.perf_counter() - t) * 1e3
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            failed += 1
            continue
        top = [(l, s) for l, s in top if s >= threshold]
        if as_json:
            click.echo(json.dumps({"file": str(f), "top_k": [{"label": l, "score": round(s, 5)} for l, s in top],
                                   "latency_ms": round(ms, 3)}))
        else:
            click.echo(f"{f}: " + ", ".join(f"{l} {s:.3f}" for l, s in top) + f"  ({ms:.1f} ms)")
    if failed:
        click.echo(f"error: {failed} of {len(files)} image(s) could not be classified", err=True)
        sys.exit(1)


def _eval(clf, src: Path, data_root, as_json) -> int:
    """Accuracy of the artifact on a folder-per-class set or a saved split list."""
    from .filelist import read_file_list

    if src.is_file():
        items = read_file_list(src, root=Path(data_root) if data_root else None)
    elif src.is_dir():
        items = [(p, c.name) for c in sorted(src.iterdir()) if c.is_dir()
                 for p in sorted(c.rglob("*")) if p.is_file() and is_image_file(p)]
    else:
        raise UserError(f"{src}: no such folder or split list")
    index = {l: i for i, l in enumerate(clf.labels)}
    unknown = sorted({c for _, c in items} - set(index))
    if unknown:
        raise UserError(f"{src}: classes {unknown} are not among the model's labels")
    correct = 0
    for p, c in items:
        correct += int(clf.predict(p).argmax() == index[c])
    acc = correct / max(len(items), 1)
    if as_json:
        click.echo(json.dumps({"eval": str(src), "n": len(items), "accuracy": acc, "artifact": str(clf.path)}))
    else:
        click.echo(f"accuracy {acc:.4f} ({correct}/{len(items)}) on {src} with {clf.path.name}")
    return 0


def main():
    cli()


if __name__ == "__main__":
    main()
