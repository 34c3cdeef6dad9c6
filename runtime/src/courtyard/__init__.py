"""Courtyard: a plugin-host runtime on Quart, served by granian or Hypercorn."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("courtyard")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
