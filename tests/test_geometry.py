"""Geometry: square boxes, exact crop/relocate against independent references, scale consistency, padding."""

import pytest
import torch
import torch.nn.functional as F

from realisid import geometry as g


def test_square_box_uses_longer_side_and_keeps_centre():
    assert g.square_box_from_detection((10, 20, 30, 60)) == (0.0, 20.0, 40.0, 60.0)
    assert g.square_box_from_detection((10, 20, 30, 60), expand=1.5) == (-10.0, 10.0, 50.0, 70.0)
    with pytest.raises(ValueError, match="empty detection box"):
        g.square_box_from_detection((5, 5, 5, 9))


def test_coordinate_round_trips():
    box = (0.25, 0.125, 0.75, 0.5)
    px = g.frac_to_px(box, 1024, 768)
    assert px == (256.0, 96.0, 768.0, 384.0)
    assert g.px_to_frac(px, 1024, 768) == box
    assert g.px_to_latent(px) == (32.0, 12.0, 96.0, 48.0)
    assert g.latent_to_px(g.px_to_latent(px)) == px
    assert g.frac_to_latent([box], (96, 128)).tolist() == [[32.0, 12.0, 96.0, 48.0]]


def test_unet_level_sizes_follow_stride_two_convs():
    assert g.unet_level_sizes(9, 4) == [9, 5, 3, 2]
    x = torch.zeros(1, 1, 9, 9)
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert conv(x).shape[-1] == 5 and conv(conv(x)).shape[-1] == 3


def test_crop_of_whole_image_equals_bilinear_resize():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    out = g.crop_and_resize(x, [[0, 0, 8, 8]], 16)
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref)


def test_crop_is_face_major_and_integer_box_is_exact_copy():
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    boxes = [[2, 3, 6, 7], [5, 1, 9, 5]]
    out = g.crop_and_resize(x, boxes, 4)
    assert out.shape == (4, 3, 4, 4)
    torch.testing.assert_close(out[0:2], x[:, :, 3:7, 2:6])
    torch.testing.assert_close(out[2:4], x[:, :, 1:5, 5:9])


def test_crop_of_constant_latent_is_constant_inside_and_zero_outside_image():
    x = torch.full((1, 4, 8, 8), 3.0)
    out = g.crop_and_resize(x, [[-4, 2, 4, 10]], 8)  # left half and bottom quarter outside the image
    assert torch.all(out[..., :6, 4:] == 3.0)
    assert torch.all(out[..., :, :4] == 0.0) and torch.all(out[..., 6:, :] == 0.0)


def test_relocate_of_crop_at_same_scale_restores_the_box_and_zeros_elsewhere():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    box = [[2, 1, 6, 5]]
    back = g.relocate(g.crop_and_resize(x, box, 4), box, (8, 8), (8, 8))
    ref = torch.zeros_like(x)
    ref[:, :, 1:5, 2:6] = x[:, :, 1:5, 2:6]
    torch.testing.assert_close(back, ref)


def test_relocate_upsampled_crop_matches_nearest_reference_for_constant_blocks():
    # a 2x2-block-constant residual at crop size 4 pasted into a 2x2-cell box is each block's value
    r = torch.arange(4, dtype=torch.float64).reshape(1, 1, 2, 2)
    res = F.interpolate(r, scale_factor=2, mode="nearest")
    out = g.relocate(res, [[3, 3, 5, 5]], (8, 8), (8, 8))
    assert out[0, 0, 3:5, 3:5].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert out.abs().sum() == r.abs().sum()


def test_relocate_is_exactly_zero_outside_fractional_box_and_antialiased_at_edge():
    res = torch.ones(1, 2, 8, 8)
    out = g.relocate(res, [[1.5, 2.0, 4.5, 6.0]], (8, 8), (8, 8))
    assert torch.all(out[..., :, :1] == 0) and torch.all(out[..., :, 5:] == 0)
    assert torch.all(out[..., :2, :] == 0) and torch.all(out[..., 6:, :] == 0)
    assert out[0, 0, 3, 1].item() == 0.5 and out[0, 0, 3, 2].item() == 1.0 and out[0, 0, 3, 4].item() == 0.5
    assert out.sum().item() == pytest.approx(2 * 3.0 * 4.0)  # area preserved: box area x channels


def test_relocate_scales_box_exactly_at_half_resolution():
    res = torch.ones(1, 1, 4, 4)
    out = g.relocate(res, [[2, 2, 6, 6]], (8, 8), (4, 4))
    ref = torch.zeros(1, 1, 4, 4)
    ref[..., 1:3, 1:3] = 1.0
    torch.testing.assert_close(out, ref)
    mask = g.box_mask([[0.25, 0.25, 0.75, 0.75]], 4, 4)
    torch.testing.assert_close(mask, ref)


def test_relocate_out_of_image_box_clips_without_error():
    res = torch.ones(2, 1, 4, 4)
    out = g.relocate(res, [[-2, -2, 2, 2]], (8, 8), (8, 8))
    assert out.shape == (2, 1, 8, 8)
    assert out[..., :2, :2].eq(1).all() and out.sum().item() == 2 * 4


def test_relocate_feather_ramps_to_zero_at_edge():
    res = torch.ones(1, 1, 8, 8)
    out = g.relocate(res, [[0, 0, 8, 8]], (8, 8), (8, 8), feather=0.25)
    assert out[0, 0, 4, 0].item() == pytest.approx(0.25) and out[0, 0, 4, 1].item() == pytest.approx(0.75)
    assert out[0, 0, 4, 3].item() == 1.0


def test_box_mask_soft_vs_hard_and_rejects_empty_box():
    soft = g.box_mask([[0.1, 0.0, 0.5, 1.0]], 1, 10, soft=True)
    hard = g.box_mask([[0.1, 0.0, 0.5, 1.0]], 1, 10, soft=False)
    assert hard[0, 0, 0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    torch.testing.assert_close(soft, hard)
    soft2 = g.box_mask([[0.15, 0.0, 0.5, 1.0]], 1, 10, soft=True)
    assert soft2[0, 0, 0, 1].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty box"):
        g.box_mask([[0.5, 0.0, 0.5, 1.0]], 4, 4)
