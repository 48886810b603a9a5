"""izoo: large, quality-controlled datasets of implicit neural representations."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("izoo")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0+src"

__all__ = ["__version__"]
