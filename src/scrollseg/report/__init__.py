"""What a run looks like: the progress plot, slice pictures, metric error maps and the
self-contained HTML run report. Drawn with matplotlib's Agg canvas (no display, no
change to the caller's pyplot backend)."""
