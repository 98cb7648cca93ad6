"""User-facing errors: the CLI prints them without a traceback and exits with code 2."""


class FslmError(Exception):
    """A problem the user can fix (bad input, missing file, unknown name)."""


class ConfigError(FslmError):
    """A stack config that does not validate; the message names file and field."""


class ModelNotFoundError(FslmError):
    """A model reference that resolves to nothing on this machine."""


class ModelFileError(ModelNotFoundError):
    """A model or adapter file that is there but cannot be used (corrupt, truncated, pickle-only); names the file."""


class DataError(FslmError):
    """A data file or record that cannot be read; the message names file and line."""


class InputError(FslmError):
    """A prompt or request that cannot be served (empty, too long)."""


class EndpointError(FslmError):
    """An OpenAI-compatible server that could not answer (unreachable, HTTP errors after retries, a stall past the
    timeout, a refused request); the message names the URL. `status` is the HTTP status of a refusal, if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
