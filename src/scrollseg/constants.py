"""Values of the competition's data format, defined once."""

IGNORE_LABEL = 2  # label voxels nobody traced: ignored by the loss, the sampler and every metric
SURFACE_LABEL = 1
