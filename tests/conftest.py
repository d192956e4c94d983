from pathlib import Path

import numpy as np
import pytest
import torch

from scrollseg.data.synth import write_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A synthetic dataset of 4 train + 2 test chunks of 48^3 to 64^3."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, n_train=4, n_test=2, size=(48, 56, 64), seed=3)
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def tiny_overrides(**extra) -> list[str]:
    base = {
        "data.patch_size": "[16,16,16]",
        "data.batch_size": 2,
        "data.num_workers": 0,
        "model.features": "[4,8]",
        "model.encoder_blocks": "[1,1]",
        "train.val_every": 1000,
        "train.log_every": 5,
        "train.checkpoint_steps": 1000,
        "inference.tile": "[32,32,32]",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
