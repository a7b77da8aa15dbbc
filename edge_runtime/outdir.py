"""The output-folder policy of every command that writes a report or a set of files into a folder
the user names (`runs compare --out`, `bench --out`, `bench merge --out`, `data split --out`, the
insight commands' `--out`): a new or empty folder is taken and marked as that command's; a folder
the same command wrote before (its mark is there) is written again; any other folder holding
files is refused, --force or not, because the command would replace files it did not write.
Deploy folders have their own, stricter rule (converter.deploy_folder)."""
from __future__ import annotations

from pathlib import Path

from .atomic import not_written, write_text
from .errors import UserError

MARK = ".edgetl-output"


def claim(folder: str | Path, kind: str) -> Path:
    """``folder`` ready for ``kind``'s files (created and marked), or one UserError naming it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: a file is in the way of the output folder; pass --out a new folder")
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if entries and owner(folder) != kind:
        shown = ", ".join([e for e in entries if e != MARK][:4])
        raise UserError(f"{folder}: holds files `edgetl {kind}` did not write ({shown}); edgetl never replaces "
                        f"them, so pass --out a new or empty folder (e.g. --out {folder / kind.replace(' ', '-')})")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise not_written(folder, e) from None
    if not entries:
        write_text(folder / MARK, kind + "\n")
    return folder


def owner(folder: Path) -> str | None:
    """The command that marked ``folder`` as its output, or None."""
    try:
        return (Path(folder) / MARK).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
