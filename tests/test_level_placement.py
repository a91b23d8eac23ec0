"""Impulse test on ComfyUI's real UNet code: a crop residual lands where the UNet's own features for that spot are.

Independent of the geometry code's formula: the level placement is MEASURED. A delta goes into the latent of a
tiny random UNet (ComfyUI's openaimodel.UNetModel, SD1.5- and SDXL-style configs, three levels), its input blocks
run, and each level's response peak gives where that level's cells sit. The conv kernels are random but made
mirror-symmetric, so the peak reflects the ops' strides and padding and not one random kernel's lopsidedness.
A sampled peak is exact only where the response is symmetric: the impulse on a level cell's centre or midway
between two; impulses at other phases (a quarter of a stride-4 cell) are not used at that level.
"""

import comfy.ops
import numpy as np
import pytest
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from realisid import geometry as g
from tests.helpers import tiny_host_models as tiny

N = 32  # latent side of the impulse runs
CONTEXT = {"sd15": tiny.SD15_CONTEXT_DIM, "sdxl": tiny.SDXL_CONTEXT_DIM}
IMPULSES = (12, 13, 14, 16)  # at stride 4: on a cell centre (12, 16), midway between two (14), a quarter (13)


def three_level_unet(family: str, seed: int) -> UNetModel:
    """The family's tiny UNet config with a third level, random weights, conv kernels mirror-symmetric."""
    cfg = dict(tiny.unet_config(family))
    depth = [0, 1, 1] if family == "sdxl" else [1, 1, 1]
    cfg.update(channel_mult=[1, 1, 1], num_res_blocks=[1, 1, 1], transformer_depth=depth,
               transformer_depth_output=[d for d in depth for _ in range(2)])
    net = tiny.randomize_(UNetModel(**cfg, dtype=torch.float32, device="cpu",
                                    operations=comfy.ops.disable_weight_init), seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1:
                m.weight.copy_((m.weight + m.weight.flip(-1) + m.weight.flip(-2) + m.weight.flip(-1, -2)) / 4)
    return net.eval()


class _Stop(Exception):
    pass


def input_block_outputs(net: UNetModel, x: torch.Tensor, family: str) -> list[torch.Tensor]:
    """The output of every input block (ComfyUI runs a block's layers one by one: hook each block's last layer)."""
    outs = []

    def hook(_module, _inputs, out):
        outs.append(out)
        if len(outs) == len(net.input_blocks):
            raise _Stop

    hooks = [block[-1].register_forward_hook(hook) for block in net.input_blocks]
    y = torch.zeros(x.shape[0], tiny.SDXL_ADM_CHANNELS) if family == "sdxl" else None
    try:
        with torch.no_grad():
            net(x, torch.full((x.shape[0],), 500.0), context=torch.zeros(x.shape[0], 4, CONTEXT[family]), y=y)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return outs


def peak(energy: torch.Tensor, reach: float = 1.25) -> float:
    """Sub-cell peak of a 1-D energy profile: the centroid of the cells within `reach` of the current estimate,
    iterated from the argmax (a window symmetric about the peak, so a symmetric response gives its centre:
    three cells around a centre, two around a midpoint; 1.25 leaves a margin for rounding)."""
    cells = torch.arange(len(energy), dtype=torch.float64)
    centre = float(energy.argmax())
    for _ in range(3):
        w = (energy - energy.median()).clamp_min(0) * ((cells - centre).abs() <= reach)
        centre = float((w * cells).sum() / w.sum())
    return centre


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def measured(request):
    """family, the levels read from the net's ops, and {level side: [(latent centre, measured level index)]}."""
    family = request.param
    net = three_level_unet(family, seed=0)
    zero = input_block_outputs(net, torch.zeros(1, 4, N, N), family)
    found = {}
    for i in IMPULSES:
        x = torch.zeros(1, 4, N, N)
        x[..., :, i] = 1.0  # a line impulse: the x placement, with the whole column's energy
        for base, out in zip(zero, input_block_outputs(net, x, family), strict=True):
            energy = ((out - base) ** 2).sum(dim=(0, 1, 2)).double()
            found.setdefault(out.shape[-1], {}).setdefault(i, []).append(peak(energy))
    return family, g.unet_levels(net), found


def symmetric_phase(i: int, level: g.Level) -> bool:
    """Whether an impulse at latent cell i sits on a centre of `level`'s cells or midway between two."""
    phase = (i + 0.5 - level.offset) / level.stride % 1.0
    return min(phase, abs(phase - 0.5)) < 1e-9


def test_levels_are_read_from_the_ops(measured):
    family, levels, found = measured
    assert [lv.size(N) for lv in levels] == sorted(found, reverse=True) == [32, 16, 8]
    assert [(lv.stride, lv.offset) for lv in levels] == [(1, 0.5), (2, 0.5), (4, 0.5)]


def test_level_cells_sit_where_the_unet_puts_them(measured):
    """Every input block's response to an impulse at latent cell i peaks at (i + 0.5 - offset) / stride."""
    _, levels, found = measured
    worst_new = worst_old = 0.0
    for level in levels:
        for i, peaks in found[level.size(N)].items():
            for p in peaks if symmetric_phase(i, level) else ():
                worst_new = max(worst_new, abs(p - (i + 0.5 - level.offset) / level.stride))
                worst_old = max(worst_old, abs(p - ((i + 0.5) / level.stride - 0.5)))  # pure scaling
    assert worst_new <= 0.05, worst_new
    assert worst_old >= 0.2  # the old rule is measurably off at levels 1 and 2


@pytest.mark.parametrize("size", [1 / 10, 1 / 7, 1 / 4, 1 / 2])
def test_relocated_crop_residual_lands_on_the_measured_place(measured, size):
    """Every full level-l cell inside the box receives the crop residual of the same latent spot.

    The crop residual is its own level-l index (a ramp j), so the pasted value of full cell i says which crop
    position landed there. Both maps come from the MEASURED placement (latent = slope * index + icept: the slope
    from the feature map's size, the offset from the impulse peaks; the same ops run on the crop and on the
    image): full cell i sits at
    latent x, i.e. at crop latent u = (x - x0) * S / side, i.e. at crop level index (u - icept) / slope. Checked
    in full level cells, on the cells wholly inside the box and the crop's unclamped range.
    """
    _, levels, found = measured
    latent, crop = 128, 64
    side = size * latent
    x0 = 17.3 + 3.1 * size
    worst = 0.0
    for level in levels[1:]:
        pts = [(i + 0.5, p) for i, ps in found[level.size(N)].items() for p in ps if symmetric_phase(i, level)]
        slope = N / level.size(N)  # the stride, from the feature map's own size
        icept = float(np.mean([x - slope * p for x, p in pts]))  # the offset, from the impulse peaks
        s = level.size(crop)
        ramp = torch.arange(s, dtype=torch.float64)[None, None, None, :].expand(1, 1, s, s)
        out = g.relocate(ramp, [[x0, x0, x0 + side, x0 + side]], (latent, latent), level, crop)[0, 0]
        row = out[out.sum(dim=1).argmax()]
        for i in range(level.size(latent)):
            x = slope * i + icept
            q = ((x - x0) * crop / side - icept) / slope
            r = side / crop
            inside = x0 + slope / 2 <= x <= x0 + side - slope / 2 and slope / (2 * r) <= q <= s - 1 - slope / (2 * r)
            if inside:
                worst = max(worst, abs(float(row[i]) - q) * r)
    assert worst <= 0.05, worst
