"""The one error type for unusable datasets (missing, corrupt or unknown)."""


class DataError(ValueError):
    """A dataset cannot be used; the message is one line naming the path or name."""
