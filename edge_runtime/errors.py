"""The error type every edgetl CLI turns into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """Something the user can fix (bad file, wrong layout, missing model). The message names the
    file and the fix; the CLIs print it as one line without a traceback."""


def read_user_file(path, missing: str, unreadable: str) -> str:
    """The text of a file the user supplied or kept, or a UserError naming it: ``missing`` is the
    fix when it is not there, ``unreadable`` when it cannot be read as UTF-8 text."""
    from pathlib import Path

    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: {unreadable} ({e.__class__.__name__})") from None
