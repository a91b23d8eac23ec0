"""Geometry: square boxes, exact crop/relocate against independent references, scale consistency, padding."""

import numpy as np
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


# ---- independent naive references (plain Python loops, float64) -------------------------------------------------

def _bilinear_clamped(img, u, v):
    """Value of img (h, w) at pixel coordinate (u, v) (cell centres at integers), coordinates clamped to the edge."""
    h, w = img.shape
    u, v = min(max(u, 0.0), w - 1.0), min(max(v, 0.0), h - 1.0)
    j0, i0 = int(u // 1), int(v // 1)
    j1, i1 = min(j0 + 1, w - 1), min(i0 + 1, h - 1)
    fu, fv = u - j0, v - i0
    top = img[i0, j0] * (1 - fu) + img[i0, j1] * fu
    bottom = img[i1, j0] * (1 - fu) + img[i1, j1] * fu
    return top * (1 - fv) + bottom * fv


def _naive_relocate(res, box, out_hw):
    """res (C, s, s) of a box already in out_hw units -> (C, h, w): per cell centre, bilinear inverse map x coverage."""
    c, s, _ = res.shape
    h, w = out_hw
    x0, y0, x1, y1 = box
    out = np.zeros((c, h, w))
    for i in range(h):
        for j in range(w):
            cover = (min(j + 1, x1) - max(j, x0)) * (min(i + 1, y1) - max(i, y0))
            if min(j + 1, x1) <= max(j, x0) or min(i + 1, y1) <= max(i, y0):
                continue  # no overlap: exactly zero
            u = (j + 0.5 - x0) / (x1 - x0) * s - 0.5
            v = (i + 0.5 - y0) / (y1 - y0) * s - 0.5
            for ch in range(c):
                out[ch, i, j] = _bilinear_clamped(res[ch], u, v) * min(max(cover, 0.0), 1.0)
    return out


def _naive_crop(latent, box, size):
    """latent (C, H, W), box in latent units -> (C, S, S): zero where the sample leaves the image, else clamped."""
    c, h, w = latent.shape
    x0, y0, x1, y1 = box
    out = np.zeros((c, size, size))
    for p in range(size):
        for q in range(size):
            x = x0 + (q + 0.5) / size * (x1 - x0)
            y = y0 + (p + 0.5) / size * (y1 - y0)
            if not (0.0 <= x <= w and 0.0 <= y <= h):
                continue
            for ch in range(c):
                out[ch, p, q] = _bilinear_clamped(latent[ch], x - 0.5, y - 0.5)
    return out


LATENT_HW = (16, 16)
FRACTIONAL_BOXES = [(2.3, 3.7, 9.1, 10.5), (7.6, 0.4, 15.2, 9.9)]


@pytest.mark.parametrize("crop", [8, 12])
def test_relocate_equals_naive_reference_at_every_scale(crop):
    """Full, 1/2 and 1/4 scale, two fractional boxes: relocate and the cached place+paste path match the loops."""
    gen = torch.Generator().manual_seed(0)
    scales = [(crop, LATENT_HW), (crop // 2, (8, 8)), (crop // 4, (4, 4))]
    placement = g.place_boxes(FRACTIONAL_BOXES, LATENT_HW, None, [hw for _, hw in scales], dtype=torch.float64)
    for s, out_hw in scales:
        res = torch.randn(2, 3, s, s, generator=gen, dtype=torch.float64)  # K=2 faces, B=1, C=3
        factor = out_hw[0] / LATENT_HW[0]
        refs = [_naive_relocate(res[k].numpy(), [v * factor for v in box], out_hw)
                for k, box in enumerate(FRACTIONAL_BOXES)]
        got = g.relocate(res, FRACTIONAL_BOXES, LATENT_HW, out_hw)
        cached = g.paste_placed(res, placement, out_hw)
        summed = g.paste_placed(res, placement, out_hw, sum_faces=True)
        for k in range(2):
            np.testing.assert_allclose(got[k].numpy(), refs[k], atol=1e-6, rtol=0)
            np.testing.assert_allclose(cached[k].numpy(), refs[k], atol=1e-6, rtol=0)
        np.testing.assert_allclose(summed[0].numpy(), refs[0] + refs[1], atol=1e-6, rtol=0)
        # exactly zero outside every (scaled) box
        outside = g.box_mask_latent(torch.tensor(FRACTIONAL_BOXES) * factor, *out_hw).sum(0)[0] == 0
        assert outside.any() and torch.all(summed[0][:, outside] == 0)
        assert np.abs(refs[0]).max() > 0.1  # the reference is not trivially zero


def test_crop_and_resize_equals_naive_reference_including_off_image_box():
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(2, 3, *LATENT_HW, generator=gen, dtype=torch.float64)
    boxes = [*FRACTIONAL_BOXES, (-3.5, 11.2, 5.3, 19.7)]  # the last leaves the image at the left and bottom
    got = g.crop_and_resize(latent, boxes, 10)
    assert got.shape == (3 * 2, 3, 10, 10)
    for k, box in enumerate(boxes):
        for b in range(2):
            ref = _naive_crop(latent[b].numpy(), box, 10)
            np.testing.assert_allclose(got[k * 2 + b].numpy(), ref, atol=1e-6, rtol=0)
    assert torch.all(got[4:, :, :, :2] == 0) and got[4:, :, 0, 5].abs().min() > 0  # zero off the image only


def test_bf16_crops_and_pastes_are_placed_as_exactly_as_float32():
    """bf16 grids would shift samples by a fraction of a cell; the placement samples bf16 tensors in float32."""
    torch.manual_seed(0)
    latent = torch.randn(1, 4, 128, 128)
    box = [[37.3, 61.7, 59.9, 84.3]]
    ref = g.crop_and_resize(latent, box, 64)
    got = g.crop_and_resize(latent.bfloat16(), box, 64)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, atol=0.03, rtol=0.02)  # only the bf16 rounding of the values
    res = torch.randn(1, 4, 64, 64)
    ref = g.relocate(res, box, (128, 128), (128, 128))
    torch.testing.assert_close(g.relocate(res.bfloat16(), box, (128, 128), (128, 128)).float(), ref, atol=0.03,
                               rtol=0.02)
