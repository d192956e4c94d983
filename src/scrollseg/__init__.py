"""scrollseg: 3D papyrus-surface segmentation for the Vesuvius Challenge Surface Detection task.

The public API (``scrollseg.train``, ``scrollseg.tune``, ``scrollseg.predict``, ``scrollseg.score``) lives in
``scrollseg.api``; it is imported on first use so that ``import scrollseg`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["train", "tune", "predict", "score"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'scrollseg' has no attribute {name!r}")
