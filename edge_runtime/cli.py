"""`edge-predict`: classify photos, folders or a test list on the device (no TensorFlow)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .classifier import DEFAULT_TOP_K
from .clikit import friendly, run_main, verbose_option
from .errors import UserError
from .image import is_image_file
from .serve.client import ServerUnreachable


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("deploy", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--dir", "folder", type=click.Path(file_okay=False), help="Classify every image under DIR.")
@click.option("--eval", "eval_src", type=click.Path(),
              help="Accuracy on a folder-per-class DIR or a split list (RUN/split/test.tsv).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where the photos of a split list live now.")
@click.option("--precision", help="Which artifact of the deploy folder (default: the manifest's).")
@click.option("--top-k", default=DEFAULT_TOP_K, show_default=True)
@click.option("--threshold", default=0.0, show_default=True, help="Hide classes scoring below this.")
@click.option("--threads", type=int, help="Interpreter threads (default: the runtime's choice).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--no-verify", is_flag=True, help="Skip the artifact's sha256 check against the manifest.")
@click.option("--video", help="Classify every frame of a video file (a URL is read as a live network camera).")
@click.option("--camera", help="Live camera: an OpenCV index (0, 1, ...), 'picamera', or a network camera's URL "
                                "(rtsp://..., http://.../stream.mjpg).")
@click.option("--reconnect-for", type=float, default=300.0, show_default=True,
              help="A live camera that drops is reopened with backoff for up to this many seconds.")
@click.option("--max-frames", type=int, help="Stop a video/camera stream after N frames.")
@click.option("--draft/--no-draft", default=None,
              help="JPEG DCT-scaled decoding for photos (default: on when the converter verified it).")
@click.option("--benchmark", is_flag=True,
              help="Latency report (raw invoke and end-to-end) per thread count, also saved as DEPLOY/benchmark.json; "
                   "with --eval, each artifact's accuracy on this device too (for `edgetl bench merge`).")
@click.option("--runs", default=50, show_default=True, help="Timed runs per --benchmark row.")
@click.option("--server", metavar="URL", help="Classify on an edge-serve server instead (then every argument "
                                              "is an image); prints what a local run prints.")
@click.option("--api-key", envvar="EDGE_SERVE_API_KEY", show_envvar=True, help="The server's API key.")
@verbose_option
@friendly
def cli(deploy, images, folder, eval_src, data_root, precision, top_k, threshold, threads, as_json, no_verify,
        video, camera, reconnect_for, max_frames, draft, benchmark, runs, server, api_key):
    """Classify IMAGES with the model in DEPLOY (the converter's folder, or a .tflite file).

    \b
    edge-predict DEPLOY photo.jpg more.jpg      photos
    edge-predict DEPLOY --dir photos/           every image under a folder
    edge-predict DEPLOY --video clip.mp4        every frame of a video
    edge-predict DEPLOY --camera 0              live camera (Ctrl-C stops, prints a summary)
    edge-predict DEPLOY --camera rtsp://cam.local/stream   network camera, reconnects when it drops
    edge-predict DEPLOY --eval RUN/split/test.tsv   accuracy on labelled photos
    edge-predict DEPLOY --benchmark --json      latency on this device
    """
    from .classifier import Classifier

    check_options(top_k, threshold, threads, max_frames)
    if server:
        sys.exit(_remote(server, api_key, [deploy, *images], folder, top_k, threshold, as_json))
    if benchmark:
        from .benchmark import benchmark as run_bench
        from .benchmark import format_table, save_report
        rep = run_bench(deploy, [precision] if precision else None, [threads] if threads else None,
                        runs=runs, verify=not no_verify)
        if eval_src:   # this device's own accuracy beside its latency (int8 kernels round per ISA)
            _device_accuracy(rep, deploy, Path(eval_src), data_root, verify=not no_verify)
        click.echo(json.dumps(rep, indent=1) if as_json else format_table(rep))
        saved = save_report(rep, deploy)
        if saved and not as_json:
            click.echo(f"saved {saved} (edgetl runs shows it beside the run)", err=True)
        return
    sources = [n for n, on in (("--eval", eval_src), ("--video", video), ("--camera", camera is not None)) if on]
    if len(sources) > 1 or (sources and (images or folder)):
        raise UserError(f"{' and '.join(sources + (['IMAGE/--dir'] if images or folder else []))} "
                        "cannot be combined: run them one at a time")
    if folder and not Path(folder).is_dir():
        raise UserError(f"--dir {folder}: no such folder")
    clf = Classifier(deploy, threads=threads, precision=precision, verify=not no_verify)
    if draft is not None:
        clf.draft = draft
    if eval_src:
        sys.exit(_eval(clf, Path(eval_src), data_root, as_json))
    if video or camera is not None:
        sys.exit(_stream(clf, video, camera, max_frames, top_k, threshold, as_json, reconnect_for=reconnect_for))
    files = [Path(p) for p in images]
    if folder:
        files += sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise UserError("nothing to classify: give IMAGE paths, --dir DIR or --eval DIR")

    def local(f):
        t = time.perf_counter()
        top = clf.classify(f, top_k)
        return top, (time.perf_counter() - t) * 1e3
    sys.exit(_classify_files(files, local, threshold, as_json, {"runtime": clf.runtime, "precision": clf.precision}))


def _device_accuracy(rep: dict, deploy, src: Path, data_root, verify: bool) -> None:
    """Each benchmarked artifact's accuracy on labelled photos, measured here, into its rows."""
    from .classifier import Classifier

    src, items = _eval_items(src, data_root)
    rep["eval"] = {"source": str(src), "n": len(items)}
    for prec in dict.fromkeys(r["precision"] for r in rep["rows"]):
        clf = Classifier(deploy, precision=prec, verify=verify)
        correct, scored, skipped = _score(clf, items, src)
        for r in rep["rows"]:
            if r["precision"] == prec:
                r["accuracy"], r["accuracy_n"] = round(correct / scored, 6), scored


def check_options(top_k: int, threshold: float, threads: int | None, max_frames: int | None) -> None:
    """Refuse values that would otherwise print nothing, or a misleading error, with exit 0."""
    from .classifier import Classifier
    Classifier.check_top_k_threshold(top_k, threshold, ("--top-k", "--threshold"))
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: give 1 or more, or leave it out for the runtime's choice")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames {max_frames}: give 1 or more, or leave it out to run until stopped")


def _classify_files(files, classify, threshold, as_json, facts: dict | None = None) -> int:
    """Print one line (or JSON object) per file, the same for a local model and a server;
    ``facts`` (e.g. which runtime ran the model) join each JSON object."""
    failed = 0
    for f in files:
        try:
            top, ms = classify(f)
        except UserError as e:
            if isinstance(e, ServerUnreachable):   # stop: every other file would fail the same way
                click.echo(f"error: {e}", err=True)
                return 2
            click.echo(f"error: {e}", err=True)
            failed += 1
            continue
        top = [(l, s) for l, s in top if s >= threshold]
        if as_json:
            click.echo(json.dumps({"file": str(f), "top_k": [{"label": l, "score": round(s, 5)} for l, s in top],
                                   "latency_ms": round(ms, 3), **(facts or {})}))
        else:
            ran = f"{facts['precision']}, " if facts and facts.get("precision") else ""
            click.echo(f"{f}: " + ", ".join(f"{l} {s:.3f}" for l, s in top) + f"  ({ran}{ms:.1f} ms)")
    if failed:
        click.echo(f"error: {failed} of {len(files)} image(s) could not be classified", err=True)
        return 1
    return 0


def _remote(url, api_key, paths, folder, top_k, threshold, as_json) -> int:
    from .serve.client import classify_remote

    files = [Path(p) for p in paths if p]
    if folder:
        files += sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise UserError("nothing to classify: give IMAGE paths or --dir DIR with --server")

    def remote(f):
        top, ms, _ = classify_remote(url, f, top_k, api_key)
        return top, ms
    return _classify_files(files, remote, threshold, as_json)


def _stream(clf, video, camera, max_frames, top_k, threshold, as_json, *, reconnect_for=300.0) -> int:
    from .stream import camera_frames, is_stream_url, run_stream, video_frames

    if reconnect_for < 0:
        raise UserError(f"--reconnect-for {reconnect_for}: give 0 or more seconds")
    live = video is None or is_stream_url(video)
    draft = clf.size if clf.draft else None    # MJPEG frames decode like the same JPEG from a file
    frames = camera_frames(camera if video is None else video, reconnect_for, draft) if live else video_frames(video)

    def show(n, top, ms):
        top = [(l, s) for l, s in top if s >= threshold]
        if as_json:
            click.echo(json.dumps({"frame": n, "top_k": [{"label": l, "score": round(s, 5)} for l, s in top],
                                   "latency_ms": round(ms, 3), "runtime": clf.runtime}))
        else:
            click.echo(f"frame {n}: " + ", ".join(f"{l} {s:.3f}" for l, s in top) + f"  ({ms:.1f} ms)")
    stats = run_stream(clf, frames, show, max_frames=max_frames, live=live, top_k=top_k)
    s = stats.summary()
    if as_json:
        click.echo(json.dumps({"summary": s}))
    else:
        live_part = f"; {s['dropped']} stale frames skipped, {s['reconnects']} reconnects" if live else ""
        click.echo(f"{s['frames']} frames in {s['seconds']:.1f}s, {s['fps']:.1f} fps; invoke latency median "
                   f"{s['latency_ms']['median']:.1f} ms, p90 {s['latency_ms']['p90']:.1f} ms{live_part}", err=True)
    return 0


def _eval_items(src: Path, data_root) -> tuple[Path, list]:
    """(what is scored, [(photo, class)]) from a split list, a training run's folder (its test
    split) or a folder-per-class set."""
    from .filelist import read_file_list

    if src.is_dir() and (src / "split" / "test.tsv").is_file() and (src / "config.json").is_file():
        src = src / "split" / "test.tsv"          # a run folder: its held-out test split
    if src.is_file():
        items = read_file_list(src, root=Path(data_root) if data_root else None)
    elif src.is_dir():
        items = [(p, c.name) for c in sorted(src.iterdir()) if c.is_dir()
                 for p in sorted(c.rglob("*")) if p.is_file() and is_image_file(p)]
    else:
        raise UserError(f"{src}: no such folder or split list")
    if not items:
        raise UserError(f"{src}: no labelled photos found; give CLASS/photo.jpg folders, a split list "
                        "(RUN/split/test.tsv) or a run folder")
    return src, items


def _score(clf, items: list, src) -> tuple[int, int, int]:
    """(correct, scored, skipped) of the artifact on labelled photos; an unreadable photo is named
    and skipped."""
    from .log import Progress

    index = {l: i for i, l in enumerate(clf.labels)}
    unknown = sorted({c for _, c in items} - set(index))
    if unknown:
        raise UserError(f"{src}: classes {unknown} are not among the model's labels")
    correct, scored, bad = 0, 0, 0
    bar = Progress(f"eval {clf.precision or clf.path.name}", len(items), unit="img")
    for p, c in items:
        bar.add()
        try:
            top = clf.predict(p, draft=False).argmax()   # full decode, as the converter verified
        except UserError as e:
            click.echo(f"skipped {e}", err=True)
            bad += 1
            continue
        correct += int(top == index[c])
        scored += 1
    bar.finish()
    if not scored:
        raise UserError(f"{src}: none of its {len(items)} photos could be read")
    return correct, scored, bad


def _eval(clf, src: Path, data_root, as_json) -> int:
    """Accuracy of the artifact on labelled photos."""
    src, items = _eval_items(src, data_root)
    correct, scored, bad = _score(clf, items, src)
    acc = correct / scored
    if as_json:
        click.echo(json.dumps({"eval": str(src), "n": scored, "skipped": bad, "accuracy": acc,
                               "artifact": str(clf.path)}))
    else:
        click.echo(f"accuracy {acc:.4f} ({correct}/{scored}) on {src} with {clf.path.name}"
                   + (f"; {bad} unreadable photo(s) skipped" if bad else ""))
    return 1 if bad else 0


def main():
    run_main(cli)


if __name__ == "__main__":
    main()
