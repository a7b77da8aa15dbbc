"""`tfds:<name>` sources (e.g. tfds:tf_flowers, tfds:cats_vs_dogs) for users with internet.

The dataset is materialised once as folder-per-class JPEGs under the edgetl cache, so every later
stage (split lists, calibration, device-side --eval) works on plain files like any other source.
Offline, plain `tfds.load` hangs for minutes retrying downloads; here a short connectivity check
fails first with a message that says what to do instead.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from .errors import DataError

DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def cache_root() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl"))


def online(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(DOWNLOAD_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def materialize(name: str, data_dir: str | None = None, out: Path | None = None) -> Path:
    """Load ``name`` with tensorflow-datasets and write it as ``out/<class>/<n>.jpg``."""
    out = Path(out) if out else cache_root() / "tfds" / name.replace("/", "_").replace(":", "_")
    if (out / ".complete").exists():
        return out
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"tfds:{name} needs tensorflow-datasets: pip install 'edgetl[train]'") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
        raise DataError(f"tfds:{name}: unknown dataset ({e.__class__.__name__}); see the TFDS catalogue") from None
    prepared = Path(str(builder.data_path)).exists()
    if not prepared and not online():
        raise DataError(f"tfds:{name} must be downloaded first and this machine is offline: run once with "
                        f"internet (it is cached in {builder.data_dir}), or pass a folder-per-class path instead")
    splits = list(builder.info.splits) or ["train"]
    names = builder.info.features["label"].names
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    from PIL import Image

    from edge_runtime.log import Progress, log
    total = sum(builder.info.splits[s].num_examples for s in splits) if builder.info.splits else 0
    log(f"tfds:{name}: writing its images once as JPEG files into {out}")
    bar = Progress(f"tfds:{name}", total, unit="img")
    n = 0
    for split in splits:
        ds = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir)
        for image, label in ds.as_numpy_iterator():
            d = tmp / names[int(label)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(d / f"{split}_{n:06d}.jpg", quality=95)
            n += 1
            bar.add()
    bar.finish()
    if n == 0:
        raise DataError(f"tfds:{name}: the dataset yielded no images")
    (tmp / ".complete").write_text(f"{n}\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
