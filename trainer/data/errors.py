from edge_runtime.errors import UserError


class DataError(UserError):
    """A dataset that cannot be used as given (missing folder, wrong layout, too few images)."""
