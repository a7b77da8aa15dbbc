"""A small photo-like dataset edgetl can always make, offline: fabric textures (the Azure seed's
dotted / striped / leopard), with random colours, scales, rotations, lighting, blur and noise,
written as JPEG folders in the real folder-per-class layout. It feeds `edgetl demo` and the fast
tests; it is hard enough that a linear model on raw pixels fails, easy for an ImageNet backbone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from edge_runtime.atomic import replacing, staging_dir

CLASSES = ("dotted", "striped", "leopard")


def _coords(size, rng):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, np.pi)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    return u, v


def _lowfreq(size, rng, scale=4):
    small = rng.normal(size=(scale, scale)).astype(np.float32)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _pattern(kind: str, size: int, rng) -> np.ndarray:
    """Float mask in [0, 1] (1 = foreground colour) or a 0/0.5/1 three-tone map for leopard."""
    u, v = _coords(size, rng)
    warp = 0.03 * _lowfreq(size, rng)
    if kind == "striped":
        period = rng.uniform(0.06, 0.2)
        duty = rng.uniform(0.3, 0.6)
        return (((u + warp) / period) % 1.0 < duty).astype(np.float32)
    if kind == "dotted":
        period = rng.uniform(0.08, 0.2)
        radius = period * rng.uniform(0.18, 0.35)
        du = ((u + warp) % period) - period / 2
        dv = ((v + (np.floor(u / period) % 2) * period / 2 * rng.integers(0, 2)) % period) - period / 2
        return ((du ** 2 + dv ** 2) < radius ** 2).astype(np.float32)
    if kind == "leopard":
        n = int(rng.integers(12, 30))
        centers = rng.uniform(-0.1, 1.1, size=(n, 2)).astype(np.float32)
        radii = rng.uniform(0.05, 0.11, size=n).astype(np.float32)
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        x = x + 0.6 * warp
        y = y + 0.6 * warp.T
        d = np.sqrt((x[None] - centers[:, 0, None, None]) ** 2 + (y[None] - centers[:, 1, None, None]) ** 2)
        rel = (d / radii[:, None, None]).min(axis=0)
        out = np.zeros((size, size), np.float32)
        out[(rel > 0.65) & (rel < 1.0)] = 1.0   # dark broken ring
        out[rel <= 0.65] = 0.5                  # tinted centre
        gaps = _lowfreq(size, rng, 8) > 0.9
        out[gaps & (out == 1.0)] = 0.0
        return out
    if kind == "checked":          # a background pattern, never a class
        period = rng.uniform(0.1, 0.25)
        return ((np.floor((u + warp) / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "cloudy":           # a background pattern, never a class
        return (_lowfreq(size, rng, int(rng.integers(3, 7))) > 0.0).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}; choose from {CLASSES}")


def make_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One texture photo as uint8 RGB."""
    mask = _pattern(kind, size, rng)[..., None]
    base = rng.uniform(60, 230, 3).astype(np.float32)
    fg = rng.uniform(0, 255, 3).astype(np.float32)
    if np.abs(fg - base).sum() < 120:  # keep the pattern visible
        fg = 255 - base
    mid = (base + fg) / 2 + rng.normal(0, 20, 3)
    img = np.where(mask == 1.0, fg, np.where(mask == 0.5, mid, base)).astype(np.float32)
    # lighting: a soft gradient and a vignette, then sensor noise
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    g = rng.uniform(-0.35, 0.35, 2)
    light = 1.0 + g[0] * (x - 0.5) + g[1] * (y - 0.5) - rng.uniform(0, 0.4) * ((x - .5) ** 2 + (y - .5) ** 2)
    img = img * light[..., None] * rng.uniform(0.7, 1.2)
    img = img + rng.normal(0, rng.uniform(2, 12), img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return np.asarray(pil)


def generate(out: Path, per_class: int = 60, size: int = 128, seed: int = 0,
             classes: tuple[str, ...] = CLASSES) -> Path:
    """Write ``out/<class>/<class>_NNNN.jpg``; deterministic for a seed."""
    if not (1 <= per_class <= 100_000 and 16 <= size <= 4096 and seed >= 0):
        from edge_runtime.errors import UserError
        raise UserError(f"synthetic data needs --per-class 1-100000, --size 16-4096 and --seed 0 or more "
                        f"(got {per_class}, {size} and {seed})")
    out = Path(out)
    rng = np.random.default_rng(seed)
    # built in a staging folder beside OUT and moved in at the end: a killed run leaves no partial
    # class that a later inspect would accept (the stale staging folder is removed next time)
    with staging_dir(out) as stage:
        for kind in classes:
            (stage / kind).mkdir()
            for i in range(per_class):
                Image.fromarray(make_image(kind, size, rng)).save(
                    stage / kind / f"{kind}_{i:04d}.jpg", format="JPEG", quality=int(rng.integers(70, 95)))
        _move_into(stage, out)
    return out


def _move_into(stage: Path, out: Path) -> None:
    """Each class folder of ``stage`` into ``out``: renamed whole when new, file by file (the
    user's other files kept) when ``out`` already has that class. A file that exists is never
    replaced: then nothing is moved."""
    import os

    from edge_runtime.errors import UserError

    clash = [out / d.name / f.name for d in stage.iterdir() for f in d.iterdir() if (out / d.name / f.name).exists()]
    if clash:
        raise UserError(f"{clash[0]}: already exists; edgetl never replaces a file, so pass a new OUT folder")
    out.mkdir(parents=True, exist_ok=True)
    for d in sorted(stage.iterdir()):
        if not (out / d.name).exists():
            os.rename(d, out / d.name)
            continue
        for f in sorted(d.iterdir()):
            os.replace(f, out / d.name / f.name)


BACKGROUNDS = ("checked", "cloudy")


def make_pointing_image(kind: str, size: int, rng: np.random.Generator, side: tuple[float, float] = (0.38, 0.5)):
    """One "pointing game" photo: the ``kind`` texture as a square patch at a random box on a
    background of a pattern that is no class, so the patch alone decides the label.
    Returns (uint8 RGB, box ``[x0, y0, x1, y1]`` in pixels, end exclusive)."""
    img = make_image(str(rng.choice(BACKGROUNDS)), size, rng)
    s = int(round(size * rng.uniform(*side)))
    x0, y0 = (int(v) for v in rng.integers(0, size - s + 1, 2))
    patch = make_image(kind, s, rng)
    img = img.copy()
    img[y0:y0 + s, x0:x0 + s] = patch
    return img, [x0, y0, x0 + s, y0 + s]


def generate_pointing(out: Path, per_class: int = 100, size: int = 128, seed: int = 0,
                      classes: tuple[str, ...] = CLASSES) -> Path:
    """A folder-per-class set for testing where a model looks (Grad-CAM's pointing game):
    ``out/<class>/*.png`` plus ``out/boxes.json`` mapping each relative path to its patch box.
    PNG, so the patch edges are exactly where the box says."""
    import json

    out = Path(out)
    rng = np.random.default_rng(seed)
    boxes = {}
    for kind in classes:
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr, box = make_pointing_image(kind, size, rng)
            rel = f"{kind}/{kind}_{i:04d}.png"
            with replacing(out / rel) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
            boxes[rel] = box
    with replacing(out / "boxes.json") as tmp:
        tmp.write_text(json.dumps(boxes, indent=0))
    return out
