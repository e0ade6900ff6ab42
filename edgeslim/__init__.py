"""edgeslim: compress a pretrained image model, export it, serve it and profile it on the device."""

from __future__ import annotations

__version__ = "0.1.0"
