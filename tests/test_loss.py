import torch

from scrollseg.losses import masked_bce_dice, segmentation_loss, subsample_label


def test_ignored_voxels_do_not_matter():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 8, 8, 8), dtype=torch.uint8)
    logits = torch.randn(2, 1, 8, 8, 8, requires_grad=True)
    loss = masked_bce_dice(logits, label)
    loss.backward()
    assert torch.all(logits.grad[label == 2] == 0)
    assert torch.any(logits.grad[label != 2] != 0)
    changed = logits.detach().clone()
    changed[label == 2] = 100.0
    assert torch.allclose(masked_bce_dice(changed, label), loss.detach())


def test_perfect_prediction_has_low_loss_and_all_ignored_is_zero():
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    label[..., 2:4, :] = 1
    good = torch.where(label == 1, 20.0, -20.0)
    bad = -good
    assert masked_bce_dice(good, label) < 0.01 < masked_bce_dice(bad, label)
    assert masked_bce_dice(torch.randn(1, 1, 8, 8, 8), torch.full_like(label, 2)) == 0


def test_deep_supervision_uses_subsampled_labels():
    label = torch.randint(0, 3, (1, 1, 16, 16, 16), dtype=torch.uint8)
    assert subsample_label(label, torch.Size([8, 8, 8])).shape[2:] == (8, 8, 8)
    outs = [torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 8, 8, 8)]
    assert torch.isfinite(segmentation_loss(outs, label))
