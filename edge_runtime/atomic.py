"""Write a file so readers see the old content or the new, never half of it: write a hidden temp
file beside the target, then rename it over the target (atomic on one file system); a whole
folder (a deploy folder) likewise, built beside its target and switched in as a unit. The one
home for this in edgetl: every artifact, list, report, plot, cache, checkpoint and deploy folder
goes through it."""
from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yields a hidden temp path beside ``path`` whose name ends like ``path``'s (writers that
    choose a format by suffix, such as `np.save` or Keras, keep working); when the block
    succeeds the temp file replaces ``path``, when it fails it is removed and ``path`` is as it
    was. ``durable``: flush the bytes to disk before the rename (artifacts that must survive a
    power cut)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise not_written(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


# what the disk or the folder refuses, as opposed to a bug: named with the fix, never a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR}


def not_written(path: Path, e: OSError) -> Exception:
    """``e`` (raised while writing ``path``) as one line for the user when the disk or folder
    refused the write; any other error as it was."""
    from .errors import UserError

    if e.errno not in WRITE_ERRNOS:
        return e
    fix = ("free some space, or pass another output folder" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "pass an output folder you can write to")
    return UserError(f"{path}: not written ({e.strerror}); {fix}")


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    with replacing(path, durable) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj, default=None) -> None:
    write_text(path, json.dumps(obj, indent=2, default=default))


@contextlib.contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """Yields an empty hidden folder beside ``path``; when the block succeeds it takes ``path``'s
    place as a unit (an atomic exchange on Linux), so a reader sees the old folder's files or
    the new folder's, never a mix. When the block fails (error, Ctrl-C) it is removed and
    ``path`` is as it was; one left by a killed process is removed by the next call."""
    import shutil

    path = Path(path)
    stage = _new_stage(path)
    try:
        yield stage
        if not path.exists():
            os.rename(stage, path)
        elif _exchange(stage, path):
            shutil.rmtree(stage)          # it now holds the old folder
        else:                             # no renameat2: two renames, a moment with no folder
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{stage.name.rsplit('-', 1)[-1]}")
            os.rename(path, old)
            os.rename(stage, path)
            shutil.rmtree(old)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise not_written(path, e) from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _new_stage(path: Path) -> Path:
    """An empty hidden folder beside ``path`` (mode from the umask, like any new folder)."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-{os.getpid()}-", dir=path.parent))
        os.chmod(stage, 0o777 & ~_umask())   # mkdtemp makes it 0700
    except OSError as e:
        raise not_written(path, e) from None
    return stage


@contextlib.contextmanager
def staging_dir(path: str | Path) -> Iterator[Path]:
    """An empty hidden folder beside ``path`` for writing many files that the caller then moves
    into place; always removed at the end (one left by a killed process goes on the next call)."""
    import shutil

    stage = _new_stage(Path(path))
    try:
        yield stage
    except OSError as e:
        raise not_written(Path(path), e) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def _remove_stale(path: Path) -> None:
    """Staging (or old) folders beside ``path`` whose process is gone."""
    import shutil

    for p in list(path.parent.glob(f".{path.name}.staging-*")) + list(path.parent.glob(f".{path.name}.old-*")):
        try:
            pid = int(p.name.rsplit(".", 1)[-1].split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
