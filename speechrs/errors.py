"""Errors a user can act on. Front doors turn them into one line (CLI) or a 4xx body (server)."""


class SpeechrsError(Exception):
    """Base of every error speechrs raises on purpose; the message says what to change."""


class ModelNotFoundError(SpeechrsError):
    """The model id or directory does not resolve to a checkpoint speechrs can read."""


class UnsupportedModelError(SpeechrsError):
    """The checkpoint was found but is of an architecture or layout speechrs does not run."""


class AudioError(SpeechrsError):
    """The audio input is empty, corrupt, in an unknown format or too long."""


class AudioTooLongError(AudioError):
    """The audio is longer than the limit in force; `seconds` is its length, told before it was resampled."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.seconds = seconds


class ServerBusyError(SpeechrsError):
    """The server's queue is full; `retry_after_s` is a guess at when a slot frees up."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDownError(SpeechrsError):
    """The server is stopping: a request still waiting for the worker is answered, not run."""


class RequestTimeoutError(SpeechrsError):
    """The client did not send its request body within the server's time limit."""


class InvalidRequestError(SpeechrsError):
    """A request field is missing, malformed or out of range; `param` names the field when known."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
