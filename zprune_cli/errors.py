"""The library's own exceptions; the CLI turns each into one line and an exit code."""


class ZpruneError(Exception):
    """A run failed for a reason the user can act on. The CLI prints the message and exits 1."""

    exit_code = 1


class ZpruneUsageError(ZpruneError):
    """The arguments do not fit together (bad value, unknown name). The CLI exits 2."""

    exit_code = 2


class NotImplementedYet(ZpruneError):
    """A command whose issue has not landed yet."""
