"""Optional dependencies, imported where a feature needs them (and only there)."""

from .errors import MissingDependency


def zstandard(feature="compression (--compress zstd)"):
    """The zstandard module, or MissingDependency naming the feature that needs it."""
    try:
        import zstandard as module
    except ImportError:
        raise MissingDependency(feature, "zstandard", "zstd") from None
    return module
