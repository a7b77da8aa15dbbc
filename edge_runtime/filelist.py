"""The split file lists (`RUN/split/{train,val,test}.tsv`) that tie every stage to the same images.

Format: a first line `# root<TAB>/abs/data/root`, then one `relative/path<TAB>class` per image.
The trainer writes them; the converter, `edgetl eval` and `edge-predict --eval` read them, so a
device can check the very images the box verified.
"""
from __future__ import annotations

from pathlib import Path

from .atomic import write_text
from .errors import UserError, read_user_file


def write_file_list(path: Path, root: Path, items: list[tuple[str, str]]) -> None:
    lines = [f"# root\t{Path(root).resolve()}"] + [f"{rel}\t{label}" for rel, label in items]
    write_text(path, "\n".join(lines) + "\n")


def read_file_list(path: Path, root: Path | None = None) -> list[tuple[Path, str]]:
    """Returns (absolute path, class name) pairs; ``root`` overrides the recorded data root
    (e.g. on a device where the photos were copied elsewhere)."""
    path = Path(path)
    lines = read_user_file(path, missing="no such split list; give a RUN/split/<name>.tsv, a run folder or a "
                                         "folder of class sub-folders",
                           unreadable="cannot be read as a split list, which is UTF-8 text with one "
                                      "'relative/path<TAB>class' per line").splitlines()
    recorded = None
    items = []
    for n, line in enumerate(lines, 1):
        if line.startswith("# root\t"):
            recorded = Path(line.split("\t", 1)[1])
            continue
        if not line.strip():     # only the first line is a comment: a class may be called "#1"
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise UserError(f"{path}:{n}: expected 'relative/path<TAB>class', got {line[:80]!r}; a split list "
                            "has one photo per line: its path, one TAB, its class")
        items.append(parts)
    base = Path(root) if root is not None else recorded
    if base is None:
        raise UserError(f"{path}: no '# root<TAB>/data/folder' first line; pass the data folder explicitly "
                        "(edge-predict --data-root DIR)")
    return [(base / rel, label) for rel, label in items]
