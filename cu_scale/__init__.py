"""cu-scale: temporal sentence grounding from partial labels with Contrast-Unity, on Ray."""

__version__ = "0.1.0"
