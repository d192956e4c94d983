"""scrollseg: 3D papyrus-surface segmentation for the Vesuvius Challenge Surface Detection task."""

__version__ = "0.1.0"
