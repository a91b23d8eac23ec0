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


def test_levels_follow_the_ops_they_are_read_from():
    conv = g.Level(((3, 2, 1),))
    assert [conv.size(n) for n in (9, 16, 17)] == [5, 8, 9]
    x = torch.zeros(1, 1, 9, 9)
    op = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert op(x).shape[-1] == conv.size(9) and op(op(x)).shape[-1] == g.Level(((3, 2, 1),) * 2).size(9)
    assert (conv.stride, conv.offset) == (2, 0.5)  # cell j centred at latent 2j + 0.5
    assert (g.Level(((3, 2, 1),) * 2).stride, g.Level(((3, 2, 1),) * 2).offset) == (4, 0.5)
    pool = g.Level(((2, 2, 0),))
    assert (pool.stride, pool.offset) == (2, 1.0)  # an average pool is pure scaling: 2 (j + 0.5)


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
    back = g.relocate(g.crop_and_resize(x, box, 4), box, (8, 8))
    ref = torch.zeros_like(x)
    ref[:, :, 1:5, 2:6] = x[:, :, 1:5, 2:6]
    torch.testing.assert_close(back, ref)


def test_relocate_upsampled_crop_matches_nearest_reference_for_constant_blocks():
    # a 2x2-block-constant residual at crop size 4 pasted into a 2x2-cell box is each block's value
    r = torch.arange(4, dtype=torch.float64).reshape(1, 1, 2, 2)
    res = F.interpolate(r, scale_factor=2, mode="nearest")
    out = g.relocate(res, [[3, 3, 5, 5]], (8, 8))
    assert out[0, 0, 3:5, 3:5].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert out.abs().sum() == r.abs().sum()


def test_relocate_is_exactly_zero_outside_fractional_box_and_antialiased_at_edge():
    res = torch.ones(1, 2, 8, 8)
    out = g.relocate(res, [[1.5, 2.0, 4.5, 6.0]], (8, 8))
    assert torch.all(out[..., :, :1] == 0) and torch.all(out[..., :, 5:] == 0)
    assert torch.all(out[..., :2, :] == 0) and torch.all(out[..., 6:, :] == 0)
    assert out[0, 0, 3, 1].item() == 0.5 and out[0, 0, 3, 2].item() == 1.0 and out[0, 0, 3, 4].item() == 0.5
    assert out.sum().item() == pytest.approx(2 * 3.0 * 4.0)  # area preserved: box area x channels


def test_relocate_out_of_image_box_clips_without_error():
    res = torch.ones(2, 1, 4, 4)
    out = g.relocate(res, [[-2, -2, 2, 2]], (8, 8))
    assert out.shape == (2, 1, 8, 8)
    assert out[..., :2, :2].eq(1).all() and out.sum().item() == 2 * 4


def test_relocate_feather_ramps_to_zero_at_edge():
    res = torch.ones(1, 1, 8, 8)
    out = g.relocate(res, [[0, 0, 8, 8]], (8, 8), feather=0.25)
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
    ref = g.relocate(res, box, (128, 128))
    torch.testing.assert_close(g.relocate(res.bfloat16(), box, (128, 128)).float(), ref, atol=0.03,
                               rtol=0.02)


# ---- area resampling against brute-force loops; the old point sampling for comparison -------------------------

def _loop_area_paste(res, box, out_n, level, crop):
    """1-D reference by explicit loops: full level cell i = sum over crop level cells j of value x overlap / cell.

    Cells sit where `level` puts them (cell j centred at stride*j + offset, stride wide); the crop's cells are mapped
    into the box and its two end cells extend past it (edge clamp). Only the part of each cell inside the box counts.
    """
    a, b = level.stride, level.offset
    x0, x1 = box
    r = (x1 - x0) / crop
    out = np.zeros(out_n)
    for i in range(out_n):
        lo, hi = max(a * i + b - a / 2, x0), min(a * i + b + a / 2, x1)
        for j in range(len(res)):
            c_lo = x0 + r * (a * j + b - a / 2) if j > 0 else -np.inf
            c_hi = x0 + r * (a * j + b + a / 2) if j < len(res) - 1 else np.inf
            overlap = min(hi, c_hi) - max(lo, c_lo)
            if overlap > 0:
                out[i] += res[j] * overlap / a
    return out


def _old_point_paste(res, box, out_n, level_scale, crop):
    """The previous rule, 1-D: bilinear value at each full cell centre, pure scaling, times the box coverage."""
    x0, x1 = (v / level_scale for v in box)
    s = len(res)
    out = np.zeros(out_n)
    for i in range(out_n):
        cover = min(i + 1, x1) - max(i, x0)
        if cover <= 0:
            continue
        u = min(max((i + 0.5 - x0) / (x1 - x0) * s - 0.5, 0.0), s - 1.0)
        j0 = min(int(u), s - 2)
        out[i] = (res[j0] * (1 - (u - j0)) + res[j0 + 1] * (u - j0)) * min(cover, 1.0)
    return out


def _band_limited(n, cycles, seed):
    """n samples of a random sum of cosines with at most `cycles` periods over the n cells."""
    rng = np.random.default_rng(seed)
    u = np.arange(n) + 0.5
    return sum(a * np.cos(2 * np.pi * f * u / n + p)
               for a, f, p in zip(rng.normal(size=6), rng.uniform(0, cycles, 6), rng.uniform(0, 6.3, 6), strict=True))


SIZES = [1 / 10, 1 / 7, 1 / 4, 1 / 2]  # face side / image side
N_LATENT, CROP = 128, 64


def _paste_1d(res, box, level=g.LEVEL0):
    """The relocation of a 1-D crop field (constant along y) into the square box x0..x1, read on a row inside it."""
    rows = _separable_paste_2d(np.ones(len(res)), res, box, level)
    return rows[int(np.argmax(rows.sum(axis=1) != 0)) + _inner_row(box, level)]


def _inner_row(box, level):
    """Index offset (from the first touched row) of a level row lying fully inside the box."""
    return int(np.ceil((box[1] - box[0]) / level.stride / 2))


def _separable_paste_2d(ry, rx, box, level):
    """The relocation of the outer product ry x rx (one face, one channel), as (h, w) numpy."""
    res = torch.from_numpy(np.outer(ry, rx))[None, None]
    out = g.relocate(res, [[box[0], box[0], box[1], box[1]]], (N_LATENT, N_LATENT), level, CROP)
    return out[0, 0].numpy()


@pytest.mark.parametrize("size", SIZES)
def test_energy_shrunk_field_equals_brute_force_area_integral_and_old_sampling_fails(size):
    """A band-limited crop field shrunk into a small box keeps the area integral over every cell (rel err <= 1e-3);
    the old point sampling reads 2x2 taps of a region several cells wide and misses it."""
    side = size * N_LATENT
    box = (37.3, 37.3 + side)
    ry, rx = _band_limited(CROP, 16, 1), _band_limited(CROP, 16, 2)  # up to half the crop's Nyquist
    got = _separable_paste_2d(ry, rx, box, g.LEVEL0)
    ref = np.outer(_loop_area_paste(ry, box, N_LATENT, g.LEVEL0, CROP), _loop_area_paste(rx, box, N_LATENT, g.LEVEL0,
                                                                                          CROP))
    old = np.outer(_old_point_paste(ry, box, N_LATENT, 1, CROP), _old_point_paste(rx, box, N_LATENT, 1, CROP))
    err_new = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    err_old = np.linalg.norm(old - ref) / np.linalg.norm(ref)
    assert err_new <= 1e-3
    if side < CROP:  # the point sampling this replaces fails the same test (at box == S both rules coincide)
        assert err_old > 1e-3, (size, err_old)


def test_energy_of_a_continuous_band_limited_field():
    """Against the exact integral of the continuous field (not the cell sums): the area rule is within 1e-3 and
    below the old point sampling, for a field of at most one period over the crop."""
    rng = np.random.default_rng(5)
    freqs, phases, amps = rng.uniform(0, 1, 5), rng.uniform(0, 6.3, 5), rng.normal(size=5)

    def integral(u0, u1):  # exact integral over crop coordinates [u0, u1] of the field
        return sum(a * (np.sin(2 * np.pi * f * u1 / CROP + p) - np.sin(2 * np.pi * f * u0 / CROP + p))
                   / (2 * np.pi * f / CROP) for a, f, p in zip(amps, freqs, phases, strict=True))

    samples = np.array([integral(u, u + 1) for u in range(CROP)])  # the crop field as cell means
    for size in SIZES[:2]:
        x0, side = 21.6, size * N_LATENT
        r = side / CROP
        ref = np.zeros(N_LATENT)
        for i in range(N_LATENT):
            lo, hi = max(i, x0), min(i + 1, x0 + side)
            if hi > lo:
                ref[i] = integral((lo - x0) / r, (hi - x0) / r) * r
        got = _paste_1d(samples, (x0, x0 + side))
        old = _old_point_paste(samples, (x0, x0 + side), N_LATENT, 1, CROP)
        err_new, err_old = (np.linalg.norm(v - ref) / np.linalg.norm(ref) for v in (got, old))
        assert err_new <= 1e-3 and err_new < err_old, (size, err_new, err_old)


def test_paste_equals_loop_reference_at_every_level_with_fractional_boxes():
    """Shrinking pastes (box <= S) at levels 0..2 with the UNet's cell placement equal the loop reference."""
    for level in (g.LEVEL0, g.Level(((3, 2, 1),)), g.Level(((3, 2, 1),) * 2)):
        for size in SIZES:
            box = (11.37, 11.37 + size * N_LATENT)
            res = _band_limited(level.size(CROP), 8, 3)
            got = _paste_1d(res, box, level)
            np.testing.assert_allclose(got, _loop_area_paste(res, box, level.size(N_LATENT), level, CROP), atol=1e-12)


def test_constant_in_constant_out_inside_and_exactly_zero_outside_at_every_level():
    levels = [g.LEVEL0, g.Level(((3, 2, 1),)), g.Level(((3, 2, 1),) * 2)]
    placement = g.place_boxes([[13.7, 40.2, 13.7 + 25.6, 40.2 + 25.6], [70.1, 5.3, 70.1 + 90.0, 95.3]],
                              (N_LATENT, N_LATENT), CROP, levels, dtype=torch.float64)
    for level in levels:
        s = level.size(CROP)
        out = g.paste_placed(torch.full((2, 3, s, s), 2.5, dtype=torch.float64), placement)
        boxes = [[13.7, 40.2, 39.3, 65.8], [70.1, 5.3, 160.1, 95.3]]
        cover = g.level_box_mask(boxes, (N_LATENT, N_LATENT), level)
        torch.testing.assert_close(out, 2.5 * cover.expand_as(out), atol=1e-12, rtol=0)
        assert torch.all(out[cover.expand_as(out) == 0] == 0) and bool((cover == 1).any())


def test_crop_shrinking_a_large_box_is_the_area_mean_and_constant_stays_constant():
    gen = torch.Generator().manual_seed(2)
    latent = torch.randn(1, 2, 40, 40, generator=gen, dtype=torch.float64)
    box = (3.3, 5.9, 3.3 + 29.6, 5.9 + 29.6)  # 29.6 cells -> 8: each crop cell averages 3.7 x 3.7 cells
    got = g.crop_and_resize(latent, [box], 8)
    r = 29.6 / 8
    ref = np.zeros((2, 8, 8))
    for p in range(8):
        for q in range(8):
            for i in range(40):
                for j in range(40):
                    oy = min(i + 1, box[1] + (p + 1) * r) - max(i, box[1] + p * r)
                    ox = min(j + 1, box[0] + (q + 1) * r) - max(j, box[0] + q * r)
                    if oy > 0 and ox > 0:
                        ref[:, p, q] += latent[0, :, i, j].numpy() * oy * ox / r**2
    np.testing.assert_allclose(got[0].numpy(), ref, atol=1e-12)
    const = g.crop_and_resize(torch.full((1, 1, 40, 40), 4.0), [box], 8)
    torch.testing.assert_close(const, torch.full_like(const, 4.0))


def test_overlapping_boxes_are_averaged_by_coverage_and_disjoint_ones_summed():
    """The overlap policy: sum / max(1, total coverage); K = 1 or disjoint boxes are plain sums (no norm built)."""
    boxes = [[4.0, 4.0, 12.0, 12.0], [8.0, 8.0, 16.0, 16.0]]
    placement = g.place_boxes(boxes, (20, 20), 8, [g.LEVEL0], dtype=torch.float64)
    res = torch.stack([torch.full((1, 8, 8), 1.0), torch.full((1, 8, 8), 3.0)]).double()
    out = g.paste_placed(res, placement, sum_faces=True)[0, 0]
    assert out[5, 5] == 1.0 and out[14, 14] == 3.0 and out[9, 9] == 2.0  # the overlap holds the mean
    assert out[2, 2] == 0.0
    apart = g.place_boxes([[0.0, 0.0, 8.0, 8.0], [10.0, 10.0, 18.0, 18.0]], (20, 20), 8, [g.LEVEL0])
    assert apart.paste[8].norm is None
    summed = g.paste_placed(res.float(), apart, sum_faces=True)[0, 0]
    assert summed[4, 4] == 1.0 and summed[14, 14] == 3.0


def test_paired_paste_and_crop_match_the_per_face_calls():
    gen = torch.Generator().manual_seed(4)
    latent = torch.randn(2, 3, 24, 24, generator=gen)
    boxes = [[2.5, 3.1, 12.5, 13.1], [9.2, 6.4, 23.0, 20.2]]
    placement = g.place_boxes(boxes, (24, 24), 16, [g.LEVEL0, g.Level(((3, 2, 1),))])
    crops = g.crop_placed(latent, placement, paired=True)
    for k in range(2):
        torch.testing.assert_close(crops[k], g.crop_and_resize(latent[k:k + 1], [boxes[k]], 16)[0])
    res = torch.randn(2, 3, 8, 8, generator=gen)
    pasted = g.paste_placed(res, placement, paired=True)
    for k in range(2):
        torch.testing.assert_close(pasted[k], g.relocate(res[k:k + 1], [boxes[k]], (24, 24), g.Level(((3, 2, 1),)),
                                                         16)[0])
