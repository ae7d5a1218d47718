"""fxbench: a locked, reproducible fracture segmentation and presence benchmark on FracAtlas."""

from fxbench._version import __version__

__all__ = ["__version__"]
