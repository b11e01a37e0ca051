"""Error types that minicaffe lets escape to users.

Every problem with user-supplied input (prototxt text, weight files, images, CLI arguments,
backend choice) is raised as a subclass of :class:`MinicaffeError` carrying one line of
explanation that names the file and the problem. The command-line tools catch exactly this
type and print that one line instead of a traceback; anything else escaping is a bug.
Every error class of the package is defined here (the modules that raise them re-export theirs
under the old names, e.g. ``minicaffe.extract.UsageError``).
"""


class MinicaffeError(Exception):
    """Base class: a clear, one-line, user-facing error."""


class PrototxtError(MinicaffeError):
    """Malformed or unsupported model definition text (carries line/column when known)."""

    def __init__(self, msg, path=None, line=None, col=None):
        self.path, self.line, self.col = path, line, col
        where = str(path) if path else "<prototxt>"
        if line is not None:
            where += f":{line}" + (f":{col}" if col is not None else "")
        super().__init__(f"{where}: {msg}")


class WeightsError(MinicaffeError):
    """Truncated, corrupt or mismatched weight file (names the layer and the shapes)."""


class ModelError(MinicaffeError):
    """A net that cannot be built: unknown layer type, bad parameter, wrong input shape."""


class BackendError(MinicaffeError):
    """A backend that was asked for but cannot run here (e.g. CUDA without a GPU)."""


class UsageError(MinicaffeError):
    """A bad command-line value or combination (one line naming the option); the CLIs exit 2."""


class InputError(UsageError):
    """An INPUT argument that does not exist or a list file that cannot be parsed."""


class DatasetError(MinicaffeError):
    """A dataset folder or split file is missing or malformed (one line naming the file)."""


class ClusterError(MinicaffeError):
    """The Dask cluster cannot be reached or used, or a shard task failed."""


class ImageError(MinicaffeError):
    """An image that cannot be decoded or used."""


class SearchError(MinicaffeError):
    """A features file, index or argument that search cannot use."""


class MinicaffeWarning(UserWarning):
    """Base class of minicaffe's warnings: the run goes on, but the user should know."""


class NonFiniteWeightsWarning(MinicaffeWarning):
    """Weights holding NaN or Inf (names the file and the layers); ``Net(..., strict=True)`` refuses them."""
