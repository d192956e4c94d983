import math

import numpy as np
import pytest
import torch

from scrollseg.config import LossConfig, build_config
from scrollseg.constants import IGNORE_LABEL
from scrollseg.errors import ConfigError
from scrollseg.losses import (
    cldice_loss,
    deep_supervision_targets,
    deep_supervision_weights,
    downsample_label,
    masked_bce_dice,
    segmentation_loss,
    skeleton_recall_loss,
    soft_skeleton,
    tubed_skeleton,
)
from scrollseg.losses.skeleton import binary_skeleton

# 2x2x2 volume, flattened in C order: two ignored voxels
LABEL_8 = [1, 0, 2, 1, 0, 2, 1, 0]
LOGITS_8 = [2.0, -1.0, 5.0, 0.5, 1.5, -3.0, -0.5, -2.0]


def as_volume(values, dtype):
    return torch.tensor(values, dtype=dtype).reshape(1, 1, 2, 2, 2)


def sheet_label(size=16, z=(7, 9)):
    """A two-voxel-thick plane across a cube."""
    label = torch.zeros(1, 1, size, size, size, dtype=torch.uint8)
    label[:, :, z[0]:z[1]] = 1
    return label


def perfect_logits(label):
    return torch.where(label == 1, 20.0, -20.0)


def test_dice_bce_matches_the_formula_by_hand():
    valid = [i for i, t in enumerate(LABEL_8) if t != IGNORE_LABEL]
    bce = sum(math.log1p(math.exp(-LOGITS_8[i])) if LABEL_8[i] == 1 else math.log1p(math.exp(LOGITS_8[i])) for i in valid) / len(valid)
    prob = [1.0 / (1.0 + math.exp(-x)) for x in LOGITS_8]
    intersection = sum(prob[i] for i in valid if LABEL_8[i] == 1)
    dice = 1.0 - (2.0 * intersection + 1e-5) / (sum(prob[i] for i in valid) + 3 + 1e-5)
    assert (bce, dice) == pytest.approx((0.6194474926578557, 0.38197907977838563), abs=1e-5)
    logits, label = as_volume(LOGITS_8, torch.float32), as_volume(LABEL_8, torch.uint8)
    assert masked_bce_dice(logits, label).item() == pytest.approx(bce + dice, abs=1e-6)
    assert masked_bce_dice(logits, label, bce_weight=0.5, dice_weight=2.0).item() == pytest.approx(0.5 * bce + 2.0 * dice, abs=1e-6)


def test_ignored_logits_change_nothing():
    label = as_volume(LABEL_8, torch.uint8)
    logits = as_volume(LOGITS_8, torch.float32).requires_grad_()
    loss = masked_bce_dice(logits, label)
    loss.backward()
    assert torch.all(logits.grad[label == IGNORE_LABEL] == 0) and torch.all(logits.grad[label != IGNORE_LABEL] != 0)
    changed = logits.detach().clone()
    changed[label == IGNORE_LABEL] = torch.tensor([-40.0, 40.0])
    assert masked_bce_dice(changed, label).item() == loss.item()
    assert masked_bce_dice(torch.randn(1, 1, 2, 2, 2), torch.full_like(label, IGNORE_LABEL)).item() == 0.0


def test_deep_supervision_weights_halve_and_drop_the_coarsest():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])


@pytest.mark.parametrize("axis", [2, 3, 4])
def test_a_one_voxel_plane_stays_a_full_plane_at_every_scale(axis):
    for index in range(16):
        label = torch.zeros(1, 1, 16, 16, 16, dtype=torch.uint8)
        label.select(axis, index).fill_(1)
        for factor, target in zip((2, 4, 8), deep_supervision_targets(label, [(8, 8, 8), (4, 4, 4), (2, 2, 2)])):
            expected = torch.zeros_like(target)
            expected.select(axis, index // factor).fill_(1)
            assert torch.equal(target, expected), (axis, index, factor)


def test_block_rules_ignore_majority_and_any_foreground():
    label = torch.zeros(1, 1, 2, 2, 8, dtype=torch.uint8)
    flat = label.view(2, 2, 4, 2)  # (z, y, block, x): four 2x2x2 blocks side by side along x
    flat[..., 0, :] = torch.tensor([[[2, 2], [2, 2]], [[2, 0], [0, 0]]])  # 5 of 8 ignored -> 2
    flat[..., 1, :] = torch.tensor([[[2, 2], [2, 2]], [[0, 0], [0, 0]]])  # exactly half ignored -> 0
    flat[..., 2, :] = torch.tensor([[[2, 2], [2, 2]], [[2, 2], [2, 1]]])  # 7 ignored and one surface voxel -> 1
    flat[..., 3, :] = torch.tensor([[[0, 0], [0, 0]], [[0, 1], [0, 0]]])  # one surface voxel -> 1
    assert downsample_label(label, 2).flatten().tolist() == [2, 0, 1, 1]


def reference_downsample(label: np.ndarray, f: int) -> np.ndarray:
    d, h, w = (s // f for s in label.shape)
    blocks = label.reshape(d, f, h, f, w, f).transpose(0, 2, 4, 1, 3, 5).reshape(d, h, w, -1)
    foreground = (blocks == 1).any(-1)
    mostly_ignored = (blocks == 2).mean(-1) > 0.5
    return np.where(foreground, 1, np.where(mostly_ignored, 2, 0)).astype(np.uint8)


def test_pooled_targets_match_the_block_rule_on_random_labels():
    rng = np.random.default_rng(0)
    # sparse surface and large ignored regions, so every case of the rule occurs at every scale
    label = np.where(rng.random((16, 16, 16)) < 0.01, 1, 0).astype(np.uint8)
    label[rng.random((4, 4, 4)).repeat(4, 0).repeat(4, 1).repeat(4, 2) < 0.5] = 2
    label[rng.random((16, 16, 16)) < 0.2] = 0
    targets = deep_supervision_targets(torch.from_numpy(label)[None, None], [(16, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2)])
    for factor, target in zip((1, 2, 4, 8), targets):
        expected = reference_downsample(label, factor)
        assert target.dtype == torch.uint8 and np.array_equal(target[0, 0].numpy(), expected), factor
        assert set(np.unique(expected)) == {0, 1, 2} or factor == 8


def test_segmentation_loss_weights_the_outputs_and_keeps_the_coarsest_in_the_graph():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 16, 16, 16), dtype=torch.uint8)
    outputs = [torch.randn(2, 1, s, s, s, requires_grad=True) for s in (16, 8, 4)]
    loss = segmentation_loss(outputs, label)
    expected = 2 / 3 * masked_bce_dice(outputs[0], label) + 1 / 3 * masked_bce_dice(outputs[1], downsample_label(label, 2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert outputs[2].grad is not None and torch.all(outputs[2].grad == 0)
    assert segmentation_loss(outputs[0], label).item() == pytest.approx(masked_bce_dice(outputs[0], label).item(), rel=1e-6)


def test_segmentation_loss_adds_the_skeleton_terms_at_full_resolution():
    torch.manual_seed(1)
    label = sheet_label()
    label[:, :, :, :3] = IGNORE_LABEL
    outputs = [torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 8, 8, 8)]
    cfg = LossConfig(bce_weight=0.5, dice_weight=1.5, skeleton_recall_weight=2.0, cldice_weight=0.7, cldice_iterations=2)
    expected = (
        masked_bce_dice(outputs[0], label, 0.5, 1.5)
        + 2.0 * skeleton_recall_loss(outputs[0], label)
        + 0.7 * cldice_loss(outputs[0], label, iterations=2)
    )
    assert segmentation_loss(outputs, label, cfg).item() == pytest.approx(expected.item(), rel=1e-6)
    assert segmentation_loss(perfect_logits(label), label, cfg).item() < 1e-3


def test_negative_loss_weights_are_refused():
    with pytest.raises(ConfigError, match="loss.skeleton_recall_weight"):
        build_config("tiny", ["loss.skeleton_recall_weight=-1"])
    with pytest.raises(ConfigError, match="loss.cldice_iterations"):
        build_config("tiny", ["loss.cldice_iterations=0"])


def slab(thickness, size=20):
    volume = torch.zeros(1, 1, size, 8, 8)
    volume[:, :, 2:2 + thickness] = 1.0
    return volume


def z_profile(volume):
    return volume[0, 0, :, 4, 4].nonzero().flatten().tolist()


def test_skeletons_find_the_middle_of_a_slab():
    assert z_profile(soft_skeleton(slab(2), 3)) == [2, 3]  # a two-voxel sheet is its own skeleton
    assert z_profile(soft_skeleton(slab(3), 3)) == [3]
    assert z_profile(soft_skeleton(slab(5), 3)) == [4]
    assert torch.equal(tubed_skeleton(slab(5)), slab(5))  # the tube covers a sheet up to five voxels thick
    assert z_profile(tubed_skeleton(slab(9))) == [4, 5, 6, 7, 8]  # middle layer 6, two voxels either side
    assert z_profile(tubed_skeleton(slab(12))) == [4, 5, 6, 7, 8, 9, 10, 11]  # core 6..9 beyond three levels, plus the tube


def test_boolean_skeleton_equals_the_soft_skeleton_on_binary_volumes():
    rng = np.random.default_rng(3)
    volume = torch.zeros(2, 1, 16, 17, 18, dtype=torch.bool)
    for _ in range(12):  # overlapping boxes up to 9 voxels thick, so deep erosion levels are not empty
        b, *corner = (int(rng.integers(0, n)) for n in (2, 12, 13, 14))
        size = rng.integers(2, 10, 3)
        volume[b, 0, corner[0]:corner[0] + size[0], corner[1]:corner[1] + size[1], corner[2]:corner[2] + size[2]] = True
    skeletons = [soft_skeleton(volume.float(), iterations) for iterations in (1, 3)]
    assert not torch.equal(*skeletons) and 0 < skeletons[1].sum() < volume.sum()
    for iterations, soft in zip((1, 3), skeletons):
        assert torch.equal(binary_skeleton(volume, iterations)[0].float(), soft)


@pytest.mark.parametrize("loss_fn", [skeleton_recall_loss, cldice_loss])
def test_skeleton_losses_reward_whole_sheets_and_punish_holes_over_thickening(loss_fn):
    label = sheet_label()
    assert loss_fn(perfect_logits(label), label).item() < 1e-4
    holed = label.clone()
    holed[0, 0, 7:9, 8, 8] = 0  # a one-voxel hole through the sheet: two voxels removed
    thick = label.clone()
    thick[0, 0, 9, 8, 8:10] = 1  # two voxels added on the sheet's side
    hole_cost = loss_fn(perfect_logits(holed), label).item()
    thickening_cost = loss_fn(perfect_logits(thick), label).item()
    assert hole_cost > 1e-3 and hole_cost > 10 * thickening_cost, (hole_cost, thickening_cost)


@pytest.mark.parametrize("loss_fn", [skeleton_recall_loss, cldice_loss])
def test_skeleton_losses_have_finite_gradients_and_ignore_label_2(loss_fn):
    torch.manual_seed(2)
    label = sheet_label()
    label[:, :, :, :, :5] = IGNORE_LABEL
    label[:, :, 2:4] = IGNORE_LABEL
    logits = (3 * torch.randn(1, 1, 16, 16, 16)).requires_grad_()
    loss = loss_fn(logits, label)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.all(logits.grad[label == IGNORE_LABEL] == 0)
    changed = logits.detach().clone()
    changed[label == IGNORE_LABEL] = 20.0
    assert loss_fn(changed, label).item() == pytest.approx(loss.item(), abs=1e-7)
