"""Package version, read from the installed distribution's metadata."""

from importlib import metadata

try:
    __version__ = metadata.version("plan-probe")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def package_versions(*dists: str) -> dict:
    """plan-probe's version and those of ``dists`` (None when not installed), for run records."""
    out = {"plan-probe": __version__}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
