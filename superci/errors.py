"""Every exception superci raises on purpose, in one tree.

Catch :class:`SuperCIError` to handle anything superci reports; the messages are written
for the person running the command and say what to do next.
"""


class SuperCIError(Exception):
    """Root of every error superci raises on purpose."""


class ProtocolError(SuperCIError):
    """A peer sent bytes that are not a valid superci message."""

    def __init__(self, message: str, code: str = "bad-message") -> None:
        super().__init__(message)
        self.code = code


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the protocol's limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="frame-too-large")


class RemoteError(SuperCIError):
    """The other side answered with an error frame."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class ConnectionClosed(SuperCIError):
    """The peer closed the connection (or it was reset)."""


class DispatcherUnavailable(SuperCIError):
    """The dispatcher could not be reached or closed the connection."""


class AuthenticationError(SuperCIError):
    """A token was missing or wrong, on either side of the connection."""


class ConfigError(SuperCIError):
    """A setting or a repository's .superci.toml is invalid."""


class WorkspaceError(SuperCIError):
    """A git operation in a runner's or observer's clone failed."""


class WorkspaceBroken(WorkspaceError):
    """A runner's clone can neither be used nor repaired: the runner must leave the pool."""


class StaleResult(SuperCIError):
    """A result or output arrived for a lease that is no longer current."""


class UnknownBuild(SuperCIError):
    """A build id or commit is not known to the dispatcher."""


class AmbiguousCommit(SuperCIError):
    """A commit id prefix names more than one known commit."""


class StorageError(SuperCIError):
    """The dispatcher could not persist state or write a result."""


class UnsafeFile(ConfigError):
    """A file of a checkout is not a regular file inside it, or is too large to read."""


class RunnerRefused(SuperCIError):
    """A runner may not join under this name: another runner holds it (``name-taken``),
    or a copy of this runner with the same identity is connected (``identity-in-use``)."""

    def __init__(self, message: str, code: str = "name-taken") -> None:
        super().__init__(message)
        self.code = code


class ReportTooLarge(SuperCIError):
    """A runner sent more of a report than the dispatcher keeps."""
