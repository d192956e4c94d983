"""Which train volumes are held out for validation: a fraction, or fold K of an N-fold split,
deterministic for a seed.

Neighbouring chunks of one scroll are alike, so a split by volume leaks; holding out whole
scrolls avoids that. ``split_by="scroll"`` does so whenever there are two or more scrolls;
the default ``"auto"`` waits for four, because with two or three scrolls one held-out
scroll is a third to a half of the training data. An N-fold split goes by scroll when
there are at least N scrolls."""
from __future__ import annotations

import numpy as np

from ..config import DataConfig
from .layout import VolumeRef

AUTO_MIN_SCROLLS = 4


def _groups(refs: list[VolumeRef], by_scroll: bool, need: int) -> list[list[VolumeRef]]:
    """Volumes grouped by scroll when asked and there are at least ``need`` scrolls, else one group each."""
    if by_scroll:
        scrolls = sorted({r.scroll_id for r in refs})
        if len(scrolls) >= need:
            return [[r for r in refs if r.scroll_id == s] for s in scrolls]
    return [[r] for r in refs]


def split_volumes(refs: list[VolumeRef], cfg: DataConfig, seed: int) -> tuple[list[VolumeRef], list[VolumeRef]]:
    """(train, held-out) volumes."""
    if cfg.val_ids:
        val_ids = set(cfg.val_ids)
        return [r for r in refs if r.id not in val_ids], [r for r in refs if r.id in val_ids]
    if len(refs) < 2 or (cfg.folds < 2 and cfg.val_fraction <= 0):
        return refs, []
    by_scroll = cfg.split_by != "volume"
    rng = np.random.default_rng(seed)
    if cfg.folds >= 2:
        groups = _groups(refs, by_scroll, cfg.folds)
        order = rng.permutation(len(groups))
        held = {int(g) for i, g in enumerate(order) if i % cfg.folds == cfg.fold}
    else:
        groups = _groups(refs, by_scroll, 2 if cfg.split_by == "scroll" else AUTO_MIN_SCROLLS)
        order = rng.permutation(len(groups))
        n_val = min(len(groups) - 1, max(1, round(cfg.val_fraction * len(groups))))
        held = {int(g) for g in order[:n_val]}
    val = {r.id for g in held for r in groups[g]}
    return [r for r in refs if r.id not in val], [r for r in refs if r.id in val]
