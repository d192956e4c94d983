"""Values the whole package must agree on, defined once."""

IGNORE_LABEL = 2  # label value of unlabelled voxels: no loss, no sampling, no metric
