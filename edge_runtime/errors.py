"""The error type every edgetl CLI turns into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """Something the user can fix (bad file, wrong layout, missing model). The message names the
    file and the fix; the CLIs print it as one line without a traceback."""
