"""Geometry: box coordinates, exact crop/relocate against independent references, scale consistency, padding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realisid import geometry as g


def test_fractions_to_latent_cells():
    assert g.frac_to_latent([(0.25, 0.125, 0.75, 0.5)], (96, 128)).tolist() == [[32.0, 12.0, 96.0, 48.0]]


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


def test_crop_of_whole_image_keeps_every_cell_mean_and_pastes_back_exactly():
    """An aligned 2x enlargement: each latent cell's four crop cells average to it (the crop keeps cell means,
    where a bilinear resize blurs them by [1/8, 3/4, 1/8]), so the paste returns the latent."""
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    out = g.crop_and_resize(x, [[0, 0, 8, 8]], 16)
    torch.testing.assert_close(F.avg_pool2d(out, 2), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(g.relocate(out, [[0, 0, 8, 8]], (8, 8)), x, atol=1e-12, rtol=0)
    blurred = F.avg_pool2d(F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False), 2)
    assert (blurred - x).abs().max() > 0.1  # what the plain bilinear crop did


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


def test_box_mask_takes_cell_centres_and_coverage_is_the_area_and_rejects_empty_box():
    hard = g.box_mask([[0.1, 0.0, 0.5, 1.0]], 1, 10)
    assert hard[0, 0, 0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    torch.testing.assert_close(g.level_box_mask([[1.0, 0.0, 5.0, 1.0]], (1, 10)).float(), hard)  # cell-aligned
    off_grid = [[1.6, 0.0, 5.0, 1.0]]  # the box starts 0.6 into cell 1, past its centre
    assert g.box_mask_latent(off_grid, 1, 10)[0, 0, 0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]  # centre 1.5 outside
    assert g.level_box_mask(off_grid, (1, 10))[0, 0, 0, 1].item() == pytest.approx(0.4)  # the covered area
    with pytest.raises(ValueError, match="empty box"):
        g.box_mask([[0.5, 0.0, 0.5, 1.0]], 4, 4)
    for bad in (float("nan"), float("inf")):  # NaN passes every "x1 <= x0" test, so it needs its own check
        with pytest.raises(ValueError, match="non-finite box"):
            g.box_mask([[0.1, 0.0, bad, 1.0]], 4, 4)


# ---- independent naive references (plain Python loops, float64) -------------------------------------------------

def _mean_preserving_values(cells):
    """1-D: values at the cell centres whose clamped linear interpolant (np.interp) has the given cell means.

    The cell-mean matrix is built by numerical quadrature of np.interp (not the closed form the code uses)."""
    n = len(cells)
    centres = np.arange(n) + 0.5
    fine = (np.arange(n * 400) + 0.5) / 400  # 400 midpoints per cell; the kinks fall on their boundaries
    basis = np.stack([np.interp(fine, centres, np.eye(n)[j]) for j in range(n)], axis=1)
    means = basis.reshape(n, 400, n).mean(axis=1)
    return np.linalg.solve(means, cells)


def _quadrature_crop_1d(cells, x0, x1, size, points=4000):
    """1-D crop by brute force: the mean over each crop cell of the mean-preserving linear field of the cells the
    box touches, by midpoint quadrature; zero off the image."""
    n = len(cells)
    i0, i1 = min(max(int(np.floor(x0)), 0), n), min(max(int(np.ceil(x1)), 0), n)
    values = _mean_preserving_values(cells[i0:i1])
    r = (x1 - x0) / size
    out = np.zeros(size)
    for p in range(size):
        lo, hi = max(x0 + r * p, 0.0), min(x0 + r * (p + 1), float(n))  # the part of the cell on the image
        if hi <= lo:
            continue
        x = lo + (hi - lo) * (np.arange(points) + 0.5) / points
        out[p] = np.interp(x, np.arange(i0, i1) + 0.5, values).mean() * (hi - lo) / r
    return out


def _naive_crop(latent, box, size):
    """latent (C, H, W), box in latent units -> (C, S, S): the 1-D brute-force crop along x, then along y."""
    c, h, w = latent.shape
    x0, y0, x1, y1 = box
    out = np.zeros((c, size, size))
    for ch in range(c):
        cols = np.stack([_quadrature_crop_1d(latent[ch, i], x0, x1, size) for i in range(h)])  # (H, S)
        out[ch] = np.stack([_quadrature_crop_1d(cols[:, q], y0, y1, size) for q in range(size)], axis=1)
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
    assert torch.all(got[4:, :, :, :3] == 0) and got[4:, :, 0, 5].abs().min() > 0  # zero off the image only


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


def test_crop_shrinking_a_large_box_matches_brute_force_and_constant_stays_constant():
    """29.6 cells -> 8: each crop cell averages 3.7 x 3.7 cells of the mean-preserving field; a constant stays."""
    gen = torch.Generator().manual_seed(2)
    latent = torch.randn(1, 2, 40, 40, generator=gen, dtype=torch.float64)
    box = (3.3, 5.9, 3.3 + 29.6, 5.9 + 29.6)
    got = g.crop_and_resize(latent, [box], 8)
    np.testing.assert_allclose(got[0].numpy(), _naive_crop(latent[0].numpy(), box, 8), atol=1e-6, rtol=0)
    const = g.crop_and_resize(torch.full((1, 1, 40, 40), 4.0), [box], 8)
    torch.testing.assert_close(const, torch.full_like(const, 4.0))


def _cosine_integral(seed, max_freq):
    """The exact integral over [u0, u1] of a random sum of cosines (at most max_freq periods per cell)."""
    rng = np.random.default_rng(seed)
    freqs, phases, amps = rng.uniform(0.02, max_freq, 4), rng.uniform(0, 6.3, 4), rng.normal(size=4)

    def integral(u0, u1):
        return sum(a * (np.sin(2 * np.pi * f * u1 + p) - np.sin(2 * np.pi * f * u0 + p)) / (2 * np.pi * f)
                   for a, f, p in zip(amps, freqs, phases, strict=True))

    return integral


@pytest.mark.parametrize("max_freq", [0.05, 0.1, 0.2])
def test_shrinking_crop_of_a_smooth_field_is_closer_to_its_exact_integral_than_the_cell_area_mean(max_freq):
    """Latent cells = the exact cell means of a continuous smooth field; a crop cell should be the field's exact
    mean over it. Reading the cells as the mean-preserving linear field beats treating them as flat (the plain
    cell-area mean, by explicit loops) by about 10x: at 0.05 / 0.1 / 0.2 periods per cell, 0.0016 / 0.0042 / 0.0095
    against 0.013 / 0.036 / 0.098 (relative RMS)."""
    n, size = 40, 8
    ix, iy = _cosine_integral(11, max_freq), _cosine_integral(12, max_freq)
    cells_x, cells_y = (np.array([f(i, i + 1) for i in range(n)]) for f in (ix, iy))
    box = (3.3, 5.9, 3.3 + 29.6, 5.9 + 29.6)
    r = 29.6 / size
    got = g.crop_and_resize(torch.from_numpy(np.outer(cells_y, cells_x))[None, None], [box], size)[0, 0].numpy()
    exact = np.outer(*(np.array([f(lo + q * r, lo + (q + 1) * r) / r for q in range(size)])
                       for f, lo in ((iy, box[1]), (ix, box[0]))))

    def flat_area_mean(cells, lo):
        out = np.zeros(size)
        for q in range(size):
            for j in range(n):
                overlap = min(lo + (q + 1) * r, j + 1) - max(lo + q * r, j)
                if overlap > 0:
                    out[q] += cells[j] * overlap / r
        return out

    flat = np.outer(flat_area_mean(cells_y, box[1]), flat_area_mean(cells_x, box[0]))
    err_new, err_flat = (np.linalg.norm(v - exact) / np.linalg.norm(exact) for v in (got, flat))
    assert err_new <= 0.01 and err_new * 4 < err_flat, (err_new, err_flat)


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


# ---- round trip: crop, take to UNet level l, relocate; against the previous rules ---------------------------------

ROUND_TRIP_LEVELS = [g.Level(((3, 2, 1),) * n) for n in range(3)]


def _smooth_field(n=N_LATENT):
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64) + 0.5, torch.arange(n, dtype=torch.float64) + 0.5,
                            indexing="ij")
    return (torch.sin(xx / 5.0) * torch.cos(yy / 7.0) + 0.3 * torch.cos((xx + yy) / 9.0))[None, None]


def _point_grid(n_out, x0, y0, x1, y1, cells):
    """grid_sample coordinates of the centres of an n_out x n_out grid over the box (box units: `cells` cells)."""
    c = torch.arange(n_out, dtype=torch.float64) + 0.5
    gx = (x0 + c / n_out * (x1 - x0)) / cells * 2 - 1
    gy = (y0 + c / n_out * (y1 - y0)) / cells * 2 - 1
    return torch.stack([gx[None].expand(n_out, n_out), gy[:, None].expand(n_out, n_out)], dim=-1)[None]


def old_point_crop(latent, box, size):
    """The previous crop: bilinear grid_sample at the crop cell centres (boxes inside the image)."""
    grid = _point_grid(size, *box, latent.shape[-1])
    return F.grid_sample(latent, grid, mode="bilinear", padding_mode="border", align_corners=False)


def old_point_paste(res, box, n, level_scale):
    """The previous relocation: bilinear grid_sample at full cell centres, box scaled by 1 / 2^l, times coverage."""
    x0, y0, x1, y1 = (v / level_scale for v in box)
    c = torch.arange(n, dtype=torch.float64) + 0.5
    gx, gy = (c - x0) / (x1 - x0) * 2 - 1, (c - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack([gx[None].expand(n, n), gy[:, None].expand(n, n)], dim=-1)[None]
    out = F.grid_sample(res, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out * g.level_box_mask([[x0, y0, x1, y1]], (n, n))


def round_trip_errors(size):
    """{level: (current, previous)} relative RMS of crop (S = 64) -> level l (a stride-2 padding-1 conv's centre tap:
    level-l cell j is latent cell 2^l j) -> relocation, against the full field's own level-l cells wholly inside
    the box."""
    field = _smooth_field()
    box = (29.3, 41.7, 29.3 + size * N_LATENT, 41.7 + size * N_LATENT)
    new_crop, old_crop = g.crop_and_resize(field, [box], CROP), old_point_crop(field, box, CROP)
    out = {}
    for n, level in enumerate(ROUND_TRIP_LEVELS):
        step = 2 ** n
        inside = g.level_box_mask([box], (N_LATENT, N_LATENT), level)[0, 0] == 1
        ref = field[0, 0, ::step, ::step][inside]
        new = g.relocate(new_crop[..., ::step, ::step], [box], (N_LATENT, N_LATENT), level, CROP)[0, 0]
        old = old_point_paste(old_crop[..., ::step, ::step], box, N_LATENT // step, step)[0, 0]
        out[n] = tuple(float((v[inside] - ref).norm() / ref.norm()) for v in (new, old))
    return out


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_of_a_smooth_field_is_closer_than_the_previous_rules_at_every_level(size):
    """Crop then relocate returns a smooth field closer than the previous point sampling did, at every level.

    Relative RMS, current (mean-preserving crop, area paste, UNet cell placement) / previous (point-sampled
    bilinear crop and paste, pure scaling); the area paste with the plain bilinear crop (the first #11 version) is
    in brackets at level 0, where it blurred by [1/8, 3/4, 1/8] and lost to the point sampling:
      face 1/10:  L0 0.00042 / 0.00381 [0.0099]   L1 0.0097 / 0.0921   L2 0.0490 / 0.3078
      face 1/7:   L0 0.00264 / 0.00384 [0.0095]   L1 0.0103 / 0.0906   L2 0.0501 / 0.2845
      face 1/4:   L0 0.00191 / 0.00268 [0.0080]   L1 0.0103 / 0.0666   L2 0.0359 / 0.1577
      face 1/2:   L0 0.00589 / 0.01158 [0.0116]   L1 0.0236 / 0.0446   L2 0.0976 / 0.1027
    """
    errors = round_trip_errors(size)
    for level, (new, old) in errors.items():
        assert new < old, (size, level, new, old)
    new0, old0 = errors[0]
    assert new0 <= 0.75 * old0, (size, new0, old0)


def test_round_trip_is_exact_for_a_box_on_the_cell_grid():
    """A box on whole cells, enlarged by an integer factor: the crop's cells average back to the latent's."""
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    box = [[5.0, 9.0, 21.0, 25.0]]  # 16 cells -> 64: four crop cells per latent cell
    back = g.relocate(g.crop_and_resize(x, box, 64), box, (32, 32))
    torch.testing.assert_close(back[..., 9:25, 5:21], x[..., 9:25, 5:21], atol=1e-12, rtol=0)
    assert torch.all(back[..., :9, :] == 0) and torch.all(back[..., :, 21:] == 0)


def _point_sample(hint, x, y):
    """Bilinear value of hint (C, S, S) at pixel coordinates (x, y) (pixel i centred at i + 0.5), zero outside."""
    c, s, _ = hint.shape
    u, v = x - 0.5, y - 0.5
    i0, j0 = int(np.floor(u)), int(np.floor(v))
    out = np.zeros(c)
    for j, wy in ((j0, 1 - (v - j0)), (j0 + 1, v - j0)):
        for i, wx in ((i0, 1 - (u - i0)), (i0 + 1, u - i0)):
            if 0 <= i < s and 0 <= j < s:
                out += wx * wy * hint[:, j, i]
    return out


def test_hints_in_boxes_places_each_drawing_in_its_box_like_a_pixel_loop():
    """The InstantID-style global hint: each crop-frame drawing lands in its box of the whole image, zero elsewhere
    (a box leaving the image keeps its inside part)."""
    gen = torch.Generator().manual_seed(3)
    hints = torch.rand(2, 3, 12, 12, generator=gen)
    boxes = [(0.1, 0.2, 0.45, 0.55), (-0.2, 0.6, 0.3, 1.1)]
    h, w = 20, 24
    got = g.hints_in_boxes(hints, boxes, h, w)
    assert got.shape == (2, 3, h, w)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        for py in range(h):
            for px in range(w):
                cx = ((px + 0.5) / w - x0) / (x1 - x0) * 12  # the pixel centre in crop pixels
                cy = ((py + 0.5) / h - y0) / (y1 - y0) * 12
                want = _point_sample(hints[k].double().numpy(), cx, cy)
                np.testing.assert_allclose(got[k, :, py, px].numpy(), want, atol=1e-5)
    inside = g.box_mask(boxes, h, w).bool().expand(-1, 3, -1, -1)
    assert got[~inside].abs().max() < 0.2  # only the bilinear fringe of the box edges leaks out
    assert got[inside].abs().mean() > 0.3


def test_hints_in_boxes_wants_one_drawing_per_box():
    with pytest.raises(ValueError, match="one per box"):
        g.hints_in_boxes(torch.zeros(1, 3, 8, 8), [(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)], 16, 16)


def test_noise_deficit_tops_the_crops_noise_back_to_the_latents_level():
    """Monte Carlo reference: crop i.i.d. unit noise many times; per crop cell, the measured variance plus the
    deficit's square is 1 where the crop lost noise (up-sampling averages neighbours), and the deficit is 0 where
    it did not (an aligned same-size crop; cells where the mean-preserving prefilter amplifies the noise, which
    fresh noise cannot undo); off-image cells kept none."""
    torch.manual_seed(0)
    noise = torch.randn(4000, 1, 12, 12, dtype=torch.float64)
    boxes = [[2.3, 3.1, 6.9, 7.7], [1, 2, 9, 10], [-3, 4, 3, 10]]  # 4.6 cells up-sampled to 8; aligned 8; half off
    placement = g.place_boxes(boxes, (12, 12), 8, (), dtype=torch.float64)
    crops = g.crop_placed(noise, placement).reshape(3, 4000, 8, 8)
    deficit = g.crop_noise_deficit(placement)[:, 0]
    measured = crops.var(dim=1)
    torch.testing.assert_close(measured + deficit**2, measured.clamp_min(1.0), atol=0.08, rtol=0.04)
    assert float(measured[0].max()) > 1.3  # the prefilter's gain at the grid's Nyquist frequency
    assert float(deficit[0].max()) > 0.6  # the small face's crop lost real noise
    assert float(deficit[1].abs().max()) < 1e-6  # the aligned crop is the latent itself
    torch.testing.assert_close(deficit[2, :, :2], torch.ones(8, 2, dtype=torch.float64))  # off the image: all fresh
