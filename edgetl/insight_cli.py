"""`edgetl explain | activations | filters | dream | attack`: look inside a trained model.

Each command opens a Subject (a run folder, or with --backbone a backbone's own ImageNet
classifier), calls one function of `trainer.insight`, saves its pictures and JSON under --out
(default RUN/insight, or ./insight for --backbone) and prints what it found.
"""
from __future__ import annotations

from pathlib import Path

import click

from edge_runtime.atomic import write_json, write_text
from edge_runtime.errors import UserError
from trainer.runs import rundir as R

from .clikit import friendly, progress_counter


def subject_options(fn):
    """--backbone/--weights/--alpha/--size/--labels: a backbone's ImageNet classifier instead of a run."""
    for opt in reversed((
        click.option("--backbone", help="Look into this backbone's own ImageNet classifier instead of a run "
                                        "(e.g. mobilenet_v2, efficientnet_lite0)."),
        click.option("--weights", default="imagenet", show_default=True,
                     help="With --backbone: imagenet | PATH to a Keras weights file with the 1000-class top."),
        click.option("--alpha", type=float, help="With --backbone: width multiplier (MobileNets)."),
        click.option("--size", type=int, help="With --backbone: input side in pixels (default: native)."),
        click.option("--labels", type=click.Path(),
                     help="With --backbone: imagenet_class_index.json or a names-per-line file."),
        click.option("--out", type=click.Path(file_okay=False),
                     help="Folder for the pictures and JSON (default RUN/insight, or ./insight with --backbone)."),
    )):
        fn = opt(fn)
    return fn


def open_subject(args: tuple[str, ...], backbone, weights, alpha, size, labels, need: str):
    """(subject, remaining args, output folder). Without --backbone the first argument is the run."""
    from trainer.insight import open_imagenet, open_run

    if backbone:
        return open_imagenet(backbone, weights, size, alpha, labels), list(args), Path("insight")
    if not args:
        raise UserError(f"give a run folder and {need} (or --backbone NAME for an ImageNet classifier)")
    return open_run(args[0]), list(args[1:]), Path(args[0]) / "insight"


def _out(out, default: Path) -> Path:
    """The default (inside the run: edgetl's own) or an --out folder claimed under the output policy."""
    from edge_runtime.atomic import not_written
    from edge_runtime.outdir import claim

    if out:
        return claim(out, "insight")
    try:
        default.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise not_written(default, e) from None
    return default


def _save_png(path: Path, image) -> None:
    from PIL import Image

    from edge_runtime.atomic import replacing

    with replacing(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


@click.command()
@click.argument("args", metavar="RUN IMAGE...", nargs=-1)
@click.option("--layer", help="Feature-map layer (default: the backbone's last spatial map).")
@click.option("--class", "class_name", help="Explain this class (default: each photo's predicted class).")
@click.option("--misclassified", is_flag=True,
              help="Explain the run's wrong test predictions as one grid: RUN/plots/misclassified_cam.png.")
@click.option("--max-images", default=16, show_default=True, help="With --misclassified: at most this many.")
@subject_options
@friendly
def explain(args, layer, class_name, misclassified, max_images, backbone, weights, alpha, size, labels, out):
    """Grad-CAM: where the model looked for a class. For each IMAGE a figure input | heatmap |
    overlay, titled with the top-3 classes.

    \b
    Examples:
      edgetl explain runs/flowers photo.jpg
      edgetl explain runs/flowers photo.jpg --class daisy --layer block_13_expand_relu
      edgetl explain runs/flowers --misclassified
      edgetl explain --backbone mobilenet_v2 --weights top.h5 --labels imagenet_class_index.json cat.jpg
    """
    from trainer.insight import explain as explain_images
    from trainer.insight import explain_misclassified
    from trainer.insight.figures import explanation_figure, misclassified_figure

    subject, images, default = open_subject(args, backbone, weights, alpha, size, labels, "IMAGE...")
    if misclassified:
        if images:
            raise UserError("--misclassified explains the run's test split; give no IMAGE with it")
        items = explain_misclassified(subject, max_images, layer)
        if not items:
            click.echo(f"{subject.name}: no wrong test predictions to explain")
            return
        path = _out(out, subject.run / R.PLOTS) / "misclassified_cam.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        misclassified_figure(items, subject.classes, path)
        for exp, true in items:
            click.echo(f"{exp.source}: true {subject.classes[true]}, predicted {subject.classes[exp.class_index]} "
                       f"{exp.probabilities[exp.class_index]:.3f}, looked at {exp.peak}")
        click.echo(f"wrote {path} ({len(items)} wrong prediction(s))")
        return
    if not images:
        raise UserError("give one or more IMAGE files to explain (or --misclassified)")
    folder = _out(out, default / "explain")
    for exp in explain_images(subject, images, class_name, layer):
        path = folder / f"{Path(exp.source).stem}_cam.png"
        explanation_figure(exp, subject.classes, path)
        top = ", ".join(f"{n} {p:.3f}" for n, p in exp.top)
        click.echo(f"{exp.source}: {top}; Grad-CAM of {subject.classes[exp.class_index]} on {exp.layer} "
                   f"peaks at x={exp.peak[0]} y={exp.peak[1]} of {subject.size} -> {path}")


@click.command()
@click.argument("args", metavar="RUN IMAGE", nargs=-1)
@click.option("--layers", default="early,middle,late", show_default=True,
              help="Comma-separated: early, middle, late (stage outputs) and/or layer names.")
@click.option("--per-layer", default=16, show_default=True, help="The most active channels shown per layer.")
@subject_options
@friendly
def activations(args, layers, per_layer, backbone, weights, alpha, size, labels, out):
    """Feature maps of chosen layers for one photo: edges -> textures -> parts.

    \b
    Examples:
      edgetl activations runs/flowers daisy.jpg
      edgetl activations runs/flowers daisy.jpg --layers block_1_expand_relu,out_relu
    """
    from trainer.insight import activations as layer_maps
    from trainer.insight.figures import activations_figure

    subject, images, default = open_subject(args, backbone, weights, alpha, size, labels, "one IMAGE")
    if len(images) != 1:
        raise UserError(f"give exactly one IMAGE (got {len(images)})")
    if per_layer < 1:
        raise UserError(f"--per-layer {per_layer}: give 1 or more")
    image, maps = layer_maps(subject, images[0], layers, per_layer)
    path = _out(out, default) / f"activations_{Path(images[0]).stem}.png"
    activations_figure(image, maps, path)
    for lm in maps:
        click.echo(f"{lm.layer}: {lm.shape[0]}x{lm.shape[1]}x{lm.shape[2]}, most active channels {lm.channels[:8]}")
    click.echo(f"wrote {path}")


@click.command()
@click.argument("args", metavar="RUN", nargs=-1)
@click.option("--layer", help="Deeper layer whose filters' favourite inputs are drawn (default: the middle stage).")
@click.option("--n", "count", default=16, show_default=True, help="Filters of that layer to draw.")
@click.option("--steps", default=60, show_default=True, help="Gradient-ascent steps per pattern.")
@click.option("--seed", default=0, show_default=True)
@subject_options
@friendly
def filters(args, layer, count, steps, seed, backbone, weights, alpha, size, labels, out):
    """The first convolution's kernels as colour tiles, and the input pattern that excites each
    of N filters of a deeper layer most (gradient ascent from noise).

    \b
    Examples:
      edgetl filters runs/flowers
      edgetl filters runs/flowers --layer block_6_expand_relu --n 8 --steps 100
    """
    from trainer.insight import filter_patterns, first_conv_filters
    from trainer.insight.figures import tiles_figure

    subject, rest, default = open_subject(args, backbone, weights, alpha, size, labels, "nothing else")
    if rest:
        raise UserError(f"unexpected argument(s) {rest}; filters takes only the run folder")
    folder = _out(out, default)
    name, kernels = first_conv_filters(subject)
    p1 = tiles_figure(kernels, [f"#{i}" for i in range(len(kernels))], folder / "filters_first_conv.png",
                      f"{name}: {len(kernels)} kernels {kernels.shape[1]}x{kernels.shape[2]}x3, each scaled to its own range",
                      scale=1.0)
    deep, chosen, images = filter_patterns(subject, layer, count, steps, seed, progress=progress_counter("filters"))
    p2 = tiles_figure(images, [f"#{c}" for c in chosen], folder / f"filters_{deep}.png",
                      f"{deep}: the input each filter responds to most ({steps} ascent steps, seed {seed})", scale=2.0)
    click.echo(f"{name}: {len(kernels)} kernels -> {p1}")
    click.echo(f"{deep}: patterns of filters {chosen} -> {p2}")


@click.command()
@click.argument("args", metavar="RUN CLASS", nargs=-1)
@click.option("--steps", default=200, show_default=True, help="At most this many gradient-ascent steps.")
@click.option("--tv-weight", default=6.0, show_default=True,
              help="Total-variation penalty: higher is smoother; 0 gives the noisy, adversarial-looking optimum.")
@click.option("--jitter", default=4, show_default=True, help="Random shift in pixels before each step (0: none).")
@click.option("--lr", default=3.0, show_default=True, help="Step size in pixel levels (gradient normalised per step).")
@click.option("--until", default=1.0, show_default=True,
              help="Stop once the class probability of the saved image reaches this (1: run every step).")
@click.option("--seed", default=0, show_default=True, help="Start noise and jitter; same seed, same image.")
@subject_options
@friendly
def dream(args, steps, tv_weight, jitter, lr, until, seed, backbone, weights, alpha, size, labels, out):
    """The class's "ideal" image: gradient ascent on its score from grey noise, with a
    total-variation penalty so it is not noise. Writes the PNG and a JSON with the class
    probability and the image's total variation.

    \b
    Examples:
      edgetl dream runs/flowers daisy
      edgetl dream runs/flowers daisy --tv-weight 0 --seed 1
      edgetl dream --backbone mobilenet_v2 --weights top.h5 --labels imagenet_class_index.json zebra
    """
    from trainer.insight import dream as dream_image

    subject, rest, default = open_subject(args, backbone, weights, alpha, size, labels, "a CLASS")
    if len(rest) != 1:
        raise UserError(f"give exactly one CLASS (got {len(rest)}); e.g. {subject.classes[0]!r}")
    r = dream_image(subject, rest[0], steps, tv_weight, seed, jitter, lr, until=until, progress=progress_counter("dream"))
    folder = _out(out, default)
    stem = "dream_" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in r.class_name)
    _save_png(folder / f"{stem}.png", r.image)
    write_json(folder / f"{stem}.json", r.summary())
    click.echo(f"{r.class_name}: probability {r.probability:.4f}, total variation {r.total_variation:.2f}, "
               f"{r.steps} step(s) -> {folder / stem}.png")


@click.command()
@click.argument("args", metavar="RUN IMAGE", nargs=-1)
@click.option("--target", help="Make the model call the photo this class (default: untargeted, any other class).")
@click.option("--eps", default="8/255", show_default=True, help="Largest change of one pixel level (L-infinity).")
@click.option("--steps", default=20, show_default=True, help="Projected-gradient steps.")
@click.option("--jpeg", type=int, metavar="QUALITY", help="Also re-encode the result as JPEG and check again.")
@click.option("--report", is_flag=True, help="Robustness table on the run's test split instead of one photo.")
@click.option("--n", "count", default=100, show_default=True, help="With --report: test photos attacked.")
@subject_options
@friendly
def attack(args, target, eps, steps, jpeg, report, count, backbone, weights, alpha, size, labels, out):
    """Adversarial photo by projected gradient descent within an L-infinity ball, then through
    every .tflite in RUN/deploy with the edge runtime: is the model on the device fooled too?

    \b
    Examples:
      edgetl attack runs/flowers daisy.jpg --target rose
      edgetl attack runs/flowers daisy.jpg --eps 2/255 --jpeg 90
      edgetl attack runs/flowers --report --n 100
    """
    from trainer.insight import attack as attack_image
    from trainer.insight import robustness_report
    from trainer.insight.attack import parse_eps
    from trainer.insight.figures import attack_figure

    subject, rest, default = open_subject(args, backbone, weights, alpha, size, labels, "an IMAGE")
    if report:
        if rest:
            raise UserError("--report attacks the run's test split; give no IMAGE with it")
        rep = robustness_report(subject, count, steps=steps, progress=progress_counter("attack"))
        folder = _out(out, default)
        write_json(folder / "attack_report.json", rep)
        write_text(folder / "attack_report.md", format_report(rep))
        click.echo(format_report(rep).rstrip("\n"))
        click.echo(f"wrote {folder / 'attack_report.json'} and .md")
        return
    if len(rest) != 1:
        raise UserError(f"give exactly one IMAGE (got {len(rest)}), or --report")
    r = attack_image(subject, rest[0], target, parse_eps(eps), steps, jpeg, progress=progress_counter("attack"))
    folder = _out(out, default)
    stem = f"attack_{Path(rest[0]).stem}"
    _save_png(folder / f"{stem}.png", r.adversarial)
    attack_figure(r, folder / f"{stem}_figure.png")
    write_json(folder / f"{stem}.json", r.summary())
    o, a = r.model["original"], r.model["adversarial"]
    click.echo(f"model: {o[0]} {o[1]:.3f} -> {a[0]} {a[1]:.3f} ({'fooled' if r.success else 'not fooled'}); "
               f"L-inf {r.linf * 255:.0f}/255, L2 {r.l2:.3f}, {r.steps} steps")
    for d in r.devices:
        click.echo(f"{d['precision']}: {d['original'][0]} {d['original'][1]:.3f} -> {d['adversarial'][0]} "
                   f"{d['adversarial'][1]:.3f} ({'fooled' if d['fooled'] else 'not fooled'})")
    if not r.devices and subject.run is not None:
        click.echo(f"no deploy folder: run `edgetl convert {subject.run}` to check the device models too")
    if r.jpeg:
        j = r.jpeg
        parts = [f"model {'fooled' if j['model']['fooled'] else 'not fooled'}"] + [
            f"{d['precision']} {'fooled' if d['fooled'] else 'not fooled'}" for d in j["devices"]]
        click.echo(f"after JPEG quality {j['quality']}: " + ", ".join(parts))
    click.echo(f"wrote {folder / stem}.png (lossless), {stem}_figure.png and {stem}.json")


def format_report(rep: dict) -> str:
    arts = rep["artifacts"]
    head = "| eps | success (float) | " + " | ".join(f"transfer to {a}" for a in arts) + " |"
    lines = [f"# Robustness of {rep['run']}", "",
             f"{rep['attack']}, {rep['steps']} steps, {rep['images']} test photos the float model gets right.",
             "Transfer: of the photos that fool the float model, the share that fools the .tflite too.", "",
             head, "|" + "---|" * (2 + len(arts))]
    for r in rep["rows"]:
        cells = []
        for a in arts:
            t = r["transfer"][a]["transfer_rate"]
            cells.append("-" if t is None else f"{t:.2f}")
        lines.append(f"| {r['eps']} | {r['success_rate']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COMMANDS = (explain, activations, filters, dream, attack)
