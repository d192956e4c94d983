"""scrollseg: 3D papyrus-surface segmentation for the Vesuvius Challenge Surface Detection task."""

__version__ = "0.1.0"


def train(config, data, run, devices="auto", strategy="ddp", overrides=None, progress=True, allow_change=()):
    """Train from Python or a notebook; see :func:`scrollseg.launch.train`."""
    from .launch import train as _train

    return _train(config, data, run, devices, strategy, overrides, progress, allow_change)
