"""The per-step RealisID forward (`branch_residuals`, shared by training and sampling) and its ComfyUI control.

Local branch: every face's box is cropped from the model input, up-sampled to S x S, run with that face's
landmark hint and p_id, and its residuals are relocated into zeros at each UNet level (`realisid.geometry`);
faces are SUMMED, except where boxes overlap: there they are averaged by coverage (`geometry.overlap_norm`).
Global branch: the whole input with one person's 1-channel box mask and p_id; persons are AVERAGED
("per_person", the paper's rule). "union" is an opt-in cheaper variant: ONE pass with the union of the masks and
the mean of the persons' p_id tokens (cost 1 pass instead of K; it blurs identities, so it is not the default).
All K faces run as ONE batched forward of batch K*B per branch, face-major (row k*B + b).
"""

from __future__ import annotations

import dataclasses
import logging

import comfy.controlnet
import comfy.model_base
import torch
import torch.nn.functional as F

from realisid import geometry, memory
from realisid.null_identity import identity_flags

log = logging.getLogger(__name__)
GLOBAL_MODES = ("per_person", "union")
PREPARED_OPTIONS = ("feather", "crop_size")  # baked into PreparedFaces once, not passed per step


@dataclasses.dataclass
class FaceCondition:
    """One person: p_id (N, C) tokens, landmark_hint (3, H, W) in [0, 1] in crop coordinates (resized to S*8
    when needed), box: a `geometry.FaceSquare` (a layout's face, resolved against each latent so it stays square)
    or (x0, y0, x1, y1) fractions of the image (the trainer's boxes, taken as they are).
    """

    p_id: torch.Tensor
    landmark_hint: torch.Tensor | None
    box: geometry.FaceSquare | tuple[float, float, float, float]


@dataclasses.dataclass
class PreparedFaces:
    """Per-step constants of a face list on one device/dtype/latent size (cached by RealisIDControl)."""

    boxes_latent: torch.Tensor  # (K, 4) latent units, float64, kept on the CPU (MPS has no float64)
    p_id: torch.Tensor  # (K, N, C)
    local_hint: torch.Tensor | None  # (K, 3, S*8, S*8)
    global_hint: torch.Tensor  # (K, 1, H*8, W*8) box masks, or (K, 3, H*8, W*8) face drawings (face_hint)
    placement: geometry.BoxPlacement | None = None  # crop and paste grids of the local branch
    noise_deficit: torch.Tensor | None = None  # (K, 1, S, S) with restore_noise (`geometry.crop_noise_deficit`)


def _resize_hint(hint: torch.Tensor, size: int) -> torch.Tensor:
    if hint.ndim != 3:
        raise ValueError(f"landmark_hint must be (C, H, W), got {tuple(hint.shape)}")
    if hint.shape[-2:] == (size, size):
        return hint
    return F.interpolate(hint[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]


def restores_noise(model) -> bool:
    """Whether the local branch tops its crops' noise back up to the latent's level (a model config option, off
    for trained RealisID models, which learnt on the up-sampled crops; see `geometry.crop_noise_deficit`)."""
    return bool(model.config.get("restore_noise", False))


def prepare_faces(model, faces: list[FaceCondition], latent_hw: tuple[int, int], device, dtype,
                  null_identity: bool = False, need_local: bool = True, crop_size: int | None = None,
                  feather: float = 0.0) -> PreparedFaces:
    """Stack the faces' boxes, p_id, landmark hints (S*8 px) and box masks (H*8 x W*8 px) on device/dtype, and
    build the local branch's crop and per-level paste matrices once (`geometry.place_boxes`)."""
    if not faces:
        raise ValueError("RealisID needs at least one face condition")
    boxes_frac = face_boxes(faces, latent_hw)
    h, w = latent_hw
    if null_identity:
        p_id = model.null_identity(1).expand(len(faces), -1, -1)
    else:
        p_id = torch.stack([f.p_id.reshape(-1, f.p_id.shape[-1]) for f in faces])
    boxes_latent = geometry.frac_to_latent(boxes_frac, latent_hw)
    local_hint = placement = noise_deficit = None
    s = crop_size or model.crop_size
    face_hint = model.global_net is not None and model.global_hint == "face_hint"
    drawings = None  # the faces' hints at the crop size: the local branch's hint, and a face-hint global's drawing
    if need_local or face_hint:
        if any(f.landmark_hint is None for f in faces):
            raise ValueError("the local branch and a face-hint global branch need a landmark_hint for every face")
        drawings = torch.stack([_resize_hint(f.landmark_hint, s * geometry.LATENT_DOWNSCALE) for f in faces])
    if need_local:
        local_hint = drawings.to(device, dtype)
        placement = geometry.place_boxes(boxes_latent, latent_hw, s, geometry.unet_levels(model.local_net), feather,
                                         dtype, device)
        noise_deficit = geometry.crop_noise_deficit(placement) if restores_noise(model) else None
    hh, ww = h * geometry.LATENT_DOWNSCALE, w * geometry.LATENT_DOWNSCALE
    if face_hint:  # the InstantID-style baseline: the face drawing on the whole image instead of the box mask
        global_hint = geometry.hints_in_boxes(drawings, boxes_frac, hh, ww)
    else:
        global_hint = geometry.box_mask(boxes_frac, hh, ww)
    return PreparedFaces(boxes_latent=boxes_latent, p_id=p_id.to(device, dtype), local_hint=local_hint,
                         global_hint=global_hint.to(device, dtype), placement=placement, noise_deficit=noise_deficit)


def face_boxes(faces: list[FaceCondition], latent_hw: tuple[int, int]) -> torch.Tensor:
    """(K, 4) float64 box fractions on this latent (FaceSquares resolved against it, see geometry.box_fractions)."""
    return geometry.box_fractions([f.box for f in faces], latent_hw)


def _repeat_faces(t: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """(B, ...) per-entry tensor -> (K*B, ...) face-major."""
    return None if t is None else t.repeat(k, *([1] * (t.ndim - 1)))


def _run_branch(net, x, hint, timesteps, context, y):
    extra = {"y": y} if y is not None else {}
    return net(x=x, hint=hint, timesteps=timesteps, context=context, **extra)


def _restored(crops: torch.Tensor, prep: PreparedFaces, noise_std: torch.Tensor | None, paired: bool) -> torch.Tensor:
    """The crops with fresh noise added where up-sampling lowered their noise level (`restores_noise`).

    The fresh noise is seeded by the noise level, so every row of a step (the positive, the negative, the identity
    twin) sees the same noise and their difference stays the identity's alone; it is one draw per face, shared by
    the batch entries.
    """
    if prep.noise_deficit is None:
        return crops
    if noise_std is None:
        raise ValueError("this model restores the crops' noise level (restore_noise) and needs noise_std, the std "
                         "of the noise in x_in; the trainer does not support restore_noise")
    k, b = prep.noise_deficit.shape[0], crops.shape[0] // prep.noise_deficit.shape[0]
    generator = torch.Generator().manual_seed(int(float(noise_std.max()) * 2**20) & 0x7FFFFFFF)
    fresh = torch.randn((k, *crops.shape[1:]), generator=generator, dtype=torch.float32)
    fresh = fresh.to(crops.device, prep.noise_deficit.dtype) * prep.noise_deficit
    std = noise_std.to(fresh.dtype).reshape(-1, 1, 1, 1)
    if paired:
        return (crops + fresh * std).to(crops.dtype)
    return (crops + fresh.repeat_interleave(b, dim=0) * _repeat_faces(std, k)).to(crops.dtype)


def local_residuals(model, x_in, timesteps, prep: PreparedFaces, y=None, paired: bool = False,
                    noise_std: torch.Tensor | None = None) -> dict:
    """Sum over faces of the relocated local-branch residuals at full-image scale (grids from prep.placement).

    paired: face k belongs to batch entry k only (the trainer's batches: one person per image), one pass of batch B.
    noise_std: (B,) std of the noise in x_in (what restore_noise tops the crops up to).
    """
    b, k = x_in.shape[0], prep.boxes_latent.shape[0]
    placement = prep.placement
    crops = _restored(geometry.crop_placed(x_in, placement, paired), prep, noise_std, paired)
    if paired:
        out = _run_branch(model.local_net, crops, prep.local_hint, timesteps, prep.p_id, y)
    else:
        out = _run_branch(model.local_net, crops, prep.local_hint.repeat_interleave(b, dim=0),
                          _repeat_faces(timesteps, k), prep.p_id.repeat_interleave(b, dim=0), _repeat_faces(y, k))
    return {key: [geometry.paste_placed(r, placement, sum_faces=not paired, paired=paired) for r in tensors]
            for key, tensors in out.items()}


def global_residuals(model, x_in, timesteps, prep: PreparedFaces, y=None, mode: str = "per_person",
                     paired: bool = False) -> dict:
    """Global-branch residuals: mean over per-person passes, or one pass with the union mask and mean p_id.

    paired: person k belongs to batch entry k only, so each entry runs once with its own mask and p_id.
    """
    if mode not in GLOBAL_MODES:
        raise ValueError(f"global_mode must be one of {GLOBAL_MODES}, got {mode!r}")
    b = x_in.shape[0]
    hint, p_id = prep.global_hint, prep.p_id
    if paired:
        geometry.check_paired(hint.shape[0], b)
        return _run_branch(model.global_net, x_in, hint, timesteps, p_id, y)
    if mode == "union":
        hint, p_id = hint.amax(dim=0, keepdim=True), p_id.mean(dim=0, keepdim=True)
    k = hint.shape[0]
    out = _run_branch(model.global_net, _repeat_faces(x_in, k), hint.repeat_interleave(b, dim=0),
                      _repeat_faces(timesteps, k), p_id.repeat_interleave(b, dim=0), _repeat_faces(y, k))
    return {key: [r.reshape(k, b, *r.shape[1:]).mean(dim=0) for r in tensors] for key, tensors in out.items()}


def _combine(local: dict | None, global_: dict | None, local_strength: float, global_strength: float) -> dict:
    out = {"input": [], "middle": [], "output": []}
    for key in ("middle", "output"):
        parts = [(local, local_strength), (global_, global_strength)]
        lists = [[t * s for t in d.get(key, [])] for d, s in parts if d is not None]
        out[key] = [sum(ts) for ts in zip(*lists, strict=True)] if lists else []
    return out


def residuals_from_prepared(model, x_in, timesteps, prep: PreparedFaces, y=None, local_strength=1.0,
                            global_strength=1.0, global_mode="per_person", use_local=True, use_global=True,
                            paired: bool = False, noise_std: torch.Tensor | None = None) -> dict:
    """branch_residuals on already prepared faces (the cached path of RealisIDControl; crop size and feather
    are baked into prep.placement)."""
    use_local = use_local and model.local_net is not None
    use_global = use_global and model.global_net is not None
    if not (use_local or use_global):
        raise ValueError("no RealisID branch to run (both disabled or absent from the model)")
    if model.has_adm and y is None:
        raise ValueError("this RealisID model is for an SDXL-style base and needs y (pooled text + sizes)")
    local = local_residuals(model, x_in, timesteps, prep, y, paired, noise_std) if use_local else None
    global_ = global_residuals(model, x_in, timesteps, prep, y, global_mode, paired) if use_global else None
    return _combine(local, global_, local_strength, global_strength)


def branch_residuals(model, x_in: torch.Tensor, timesteps: torch.Tensor, faces: list[FaceCondition], y=None,
                     null_identity: bool = False, local_strength: float = 1.0, global_strength: float = 1.0,
                     global_mode: str = "per_person", feather: float = 0.0, use_local: bool = True,
                     use_global: bool = True, crop_size: int | None = None, paired: bool = False,
                     noise_std: torch.Tensor | None = None) -> dict:
    """THE RealisID forward: {"input": [], "middle": [...], "output": [...]} residuals for the base UNet.

    x_in: (B, 4, H, W) model input (already scaled by model_sampling.calculate_input); timesteps: (B,) model
    timesteps; y: (B, adm) for SDXL-style bases. Every face acts on every batch entry (sampling: K people in
    each image); paired=True binds face k to batch entry k alone (training: one person per image, K == B).
    noise_std: (B,) std of the noise in x_in, needed by a model with restore_noise (`restores_noise`).
    """
    dtype = next(model.local_net.parameters() if model.local_net is not None else model.global_net.parameters()).dtype
    dtype = model.manual_cast_dtype or dtype
    need_local = use_local and model.local_net is not None
    prep = prepare_faces(model, faces, tuple(x_in.shape[-2:]), x_in.device, dtype, null_identity, need_local,
                         crop_size, feather)
    return residuals_from_prepared(model, x_in.to(dtype), timesteps.to(dtype), prep,
                                   None if y is None else y.to(x_in.device, dtype), local_strength, global_strength,
                                   global_mode, use_local, use_global, paired, noise_std)


class RealisIDControl(comfy.controlnet.ControlBase):
    """A ComfyUI control (goes in conditioning['control']) that adds RealisID's residuals.

    The RealisIDModel is shared by every copy (one copy of each branch whatever K). `self.strength` scales
    everything (as core); local/global strengths scale the branches before that. The negative carries a
    `with_identity(False)` twin, so any guider shows the identity to the positive only; the RealisID Guider puts
    the twin back and routes the rows per cond (`identity_flags`) to evaluate all predictions in one batch.
    """

    routes_identity = True  # the guidance routes identity per cond instead of copying this control
    identity_twin = None  # for a with_identity() copy: the object it mirrors

    def __init__(self, model, faces: list[FaceCondition], strength: float = 1.0,
                 timestep_percent_range: tuple[float, float] = (0.0, 1.0), local_strength: float = 1.0,
                 global_strength: float = 1.0, global_mode: str = "per_person", feather: float = 0.0,
                 use_local: bool = True, use_global: bool = True, identity_enabled: bool = True,
                 crop_size: int | None = None):
        super().__init__()
        if global_mode not in GLOBAL_MODES:
            raise ValueError(f"global_mode must be one of {GLOBAL_MODES}, got {global_mode!r}")
        self.model = model
        self.faces = list(faces)
        self.strength = strength
        self.timestep_percent_range = tuple(timestep_percent_range)
        self.options = dict(local_strength=local_strength, global_strength=global_strength, global_mode=global_mode,
                            feather=feather, use_local=use_local, use_global=use_global, crop_size=crop_size)
        self.identity_enabled = identity_enabled
        self.model_sampling_current = None
        self._memory_shape = None  # what the last memory estimate assumed (checked once against the first call)
        self._prepared: dict = {}  # (device, dtype, latent hw, identity) -> PreparedFaces, kept across steps

    def _prepare(self, x_noisy: torch.Tensor, dtype, identity: bool) -> PreparedFaces:
        key = (x_noisy.device, dtype, tuple(x_noisy.shape[-2:]), identity)
        if key not in self._prepared:
            if len(self._prepared) >= 2:  # a new latent size or device: the old entries are stale
                self._prepared.clear()
            need_local = self.options["use_local"] and self.model.local_net is not None
            self._prepared[key] = prepare_faces(self.model, self.faces, key[2], x_noisy.device, dtype, not identity,
                                                need_local, self.options["crop_size"], self.options["feather"])
        return self._prepared[key]

    def _outside_range(self, t) -> bool:
        r = self.timestep_range
        return r is not None and (t[0] > r[0] or t[0] < r[1])

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self._outside_range(t):
            return prev
        self._check_memory_shape(x_noisy)
        dtype = self.model.dtype
        ms = self.model_sampling_current
        x_in = ms.calculate_input(t, x_noisy).to(dtype)
        y = cond.get("y") if self.model.has_adm else None
        y = None if y is None else comfy.model_base.convert_tensor(y, dtype, x_noisy.device)
        timesteps = ms.timestep(t).to(dtype)
        # x_in is linear in x_noisy, so the noise of std t in x_noisy has std calculate_input(t, t) in x_in
        noise_std = ms.calculate_input(t, t.reshape(-1, 1, 1, 1).float()).flatten() if restores_noise(self.model) \
            else None
        chunk_flags = [self.identity_enabled and f for f in identity_flags(transformer_options, batched_number)]
        rows = [f for f in chunk_flags for _ in range(x_noisy.shape[0] // len(chunk_flags))]
        parts = []
        for identity in (True, False):
            index = [i for i, f in enumerate(rows) if f == identity]
            if index:
                parts.append((index, self._residuals(x_noisy, (x_in, timesteps, y, noise_std), dtype, identity, index,
                                                     len(rows))))
        control = parts[0][1] if len(parts) == 1 else _merge_rows(parts, len(rows))
        return self.control_merge(control, prev, output_dtype=None)

    def _residuals(self, x_noisy, inputs: tuple, dtype, identity: bool, index: list[int], rows: int) -> dict:
        """Residuals of the batch rows in `index`, all with or all without the identity; inputs: (x_in,
        timesteps, y, noise_std), each per row (y and noise_std may be None)."""
        options = {k: v for k, v in self.options.items() if k not in PREPARED_OPTIONS}
        x_in, timesteps, y, noise_std = inputs
        if len(index) < rows:
            sel = torch.tensor(index, device=x_in.device)
            x_in, timesteps, y = x_in[sel], timesteps[sel], None if y is None else y[sel]
            noise_std = None if noise_std is None else noise_std[sel]
        return residuals_from_prepared(self.model, x_in, timesteps, self._prepare(x_noisy, dtype, identity), y,
                                       noise_std=noise_std, **options)

    def copy(self) -> RealisIDControl:
        c = RealisIDControl(self.model, self.faces, identity_enabled=self.identity_enabled, **self.options)
        self.copy_to(c)
        c.identity_twin = self.identity_twin  # a copy of a null twin mirrors the same control (guidance pairing)
        return c

    def with_identity(self, enabled: bool) -> RealisIDControl:
        """A copy that uses the faces' p_id (True) or the model's null identity (False); chain is shared.

        The copy remembers `identity_twin` (this object), so a guider that routes identity per cond can put the
        twin back and evaluate both in one UNet batch.
        """
        c = self.copy()
        c.identity_enabled = bool(enabled)
        c.previous_controlnet = self.previous_controlnet
        c.identity_twin = self
        return c

    def get_models(self):
        return super().get_models() + self.model.get_models()

    def pre_run(self, model, percent_to_timestep_function):
        from realisid.checkpoint import check_base_compat

        check_base_compat(self.model, model)  # a clear error now beats a shape mismatch inside the UNet
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self):
        self.model_sampling_current = None
        self._prepared = {}
        super().cleanup()

    def inference_memory_requirements(self, dtype):
        """The chain's requirement plus this control's branch activations (`realisid.memory`): unlike a core
        ControlNet the branches run K faces x batch x predictions rows, which the UNet's own estimate misses."""
        shape = memory.current_shape(self.model.base_family)
        self._memory_shape = shape
        need = memory.branch_bytes(self.model, len(self.faces), shape, self.model.dtype, self.options)
        return super().inference_memory_requirements(dtype) + int(need)

    def _check_memory_shape(self, x_noisy: torch.Tensor) -> None:
        """Warn once when a call is bigger than what the memory estimate assumed (no guider published the shape)."""
        shape = self._memory_shape
        if shape is None:
            return
        area = x_noisy.shape[-2] * x_noisy.shape[-1]
        if x_noisy.shape[0] > shape.rows or area > shape.latent_hw[0] * shape.latent_hw[1]:
            log.warning("RealisID: ComfyUI's memory estimate counted the branches for %d row(s) of %dx%d latents "
                        "(%d face(s)), this call runs %d of %dx%d; if memory runs out, sample with the RealisID "
                        "Guider (it reports the real shape) or use global_mode=union", shape.rows,
                        *shape.latent_hw, len(self.faces), x_noisy.shape[0], *x_noisy.shape[-2:])
        self._memory_shape = None



def _merge_rows(parts: list[tuple[list[int], dict]], rows: int) -> dict:
    """Residual dicts computed for disjoint row sets -> one dict over all rows, in batch order."""
    merged = {}
    for key in ("input", "middle", "output"):
        tensors = []
        for level in range(len(parts[0][1].get(key, []))):
            first = parts[0][1][key][level]
            out = first.new_zeros((rows, *first.shape[1:]))
            for index, part in parts:
                out[torch.tensor(index, device=out.device)] = part[key][level]
            tensors.append(out)
        merged[key] = tensors
    return merged
