"""Which folder a conversion may write, and what of it may be replaced.

A deploy folder holds one model's artifacts. edgetl replaces a folder only when everything in it
is a file edgetl writes there (manifest, labels, model_<precision>.tflite, the device's
benchmark.json, the conversion log): a folder holding anything else is the user's and is refused,
whatever the flags. A deploy folder of the same run is replaced freely (a re-run of `convert`);
one of another run needs --force. The run itself, any folder inside it other than its own
deploy/, and any parent of it are refused: replacing them would delete the run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import UserError
from edge_runtime.manifest import FORMAT, NAME

from .precision import FILES as PRECISION_FILES

OURS = {NAME, "labels.txt", "benchmark.json", "deploy.log", *PRECISION_FILES}


@dataclass
class DeployTarget:
    """Where a conversion writes. ``previous``: the manifest of the edgetl deploy folder it
    replaces (None for a new or empty folder); ``same_run``: that folder came from this run."""
    out: Path
    previous: dict | None = None
    same_run: bool = False


def deploy_target(out: Path, run: Path, deploy_name: str, force: bool) -> DeployTarget:
    out, run = Path(out), Path(run)
    _refuse_run_overlap(out, run, deploy_name)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: a file is in the way of the deploy folder; pass --out a new folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        _check_writable(out)
        return DeployTarget(out)
    previous = _edgetl_manifest(out)
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries
               if e.name not in OURS and not (previous and e.name in _listed(previous))]
    if previous is None or foreign:
        shown = ", ".join((foreign or [e.name for e in entries])[:4])
        raise UserError(f"{out}: holds files edgetl did not write ({shown}); edgetl never replaces them, "
                        f"so pass --out a new or empty folder (e.g. --out {out / 'edgetl-deploy'})")
    same_run = previous.get("source_run") == str(run.resolve())
    if not same_run and not force:
        raise UserError(f"{out}: holds the verified artifacts of another run ({previous.get('source_run')}); "
                        "pass --force to replace them, or --out another folder")
    _check_writable(out)
    return DeployTarget(out, previous, same_run)


def _check_writable(out: Path) -> None:
    """The new folder is staged beside ``out``: its parent must take new files."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.edgetl-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{out}: output folder is not writable ({e.strerror}); pass --out DIR") from None


def _refuse_run_overlap(out: Path, run: Path, deploy_name: str) -> None:
    o, r = out.resolve(), run.resolve()
    if o == r / deploy_name:
        return
    if o == r or r in o.parents:
        where = "is the run itself" if o == r else f"is inside the run {run}"
        raise UserError(f"{out}: {where}, which convert must not replace; pass --out "
                        f"{run / deploy_name} (the default) or a folder outside the run")
    if o in r.parents:
        raise UserError(f"{out}: holds the run {run}, which convert must not replace; pass --out a new folder")


def _edgetl_manifest(folder: Path) -> dict | None:
    """The folder's manifest when it is an edgetl deploy folder, else None."""
    import json

    try:
        data = json.loads((folder / NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _listed(manifest: dict) -> set[str]:
    arts = manifest.get("artifacts")
    return {a["file"] for a in arts if isinstance(a, dict) and isinstance(a.get("file"), str)
            and "/" not in a["file"] and a["file"] not in (".", "..")} if isinstance(arts, list) else set()
