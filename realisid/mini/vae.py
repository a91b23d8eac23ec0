"""The Mini VAE: ComfyUI's TAESD architecture (8x, family.LATENT_CHANNELS latent channels), trained on Mini scenes.

Trained on patches (the network is convolutional; a 256 px image costs 16x a 64 px patch), most of them centred on
a face, with the loss weighted up inside the faces and their hair, where identity lives, plus an identity loss:
the trained Mini face net (the conditioning encoder, never the judge that the gates use) reads the face crops of
the input and of its reconstruction, and its features, landmarks and embedding must agree (a face-specific
perceptual loss, as LPIPS is for photos; pixel losses alone left irises, glasses and mouths blurred after 2k steps).
After training, `vae_scale` / `vae_shift` are set so that `encode` gives latents of zero mean and unit variance: the Mini latent
format then needs no scale factor.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from realisid.mini import crops, facenets, training, world

log = logging.getLogger(__name__)

POOL_SIZE = 1200  # scenes per pool; a new pool every POOL_STEPS steps
POOL_STEPS = 400
FACE_WEIGHT = 4.0  # loss weight inside faces (plus 1 everywhere)
FACE_MARGIN = 1.4  # the weighted square around a face box, relative to its side (hair included)
FACE_PATCHES = 3  # of every 4 patches, this many are centred on a face: the gates read faces, not backgrounds
EMA_DECAY = 0.999
IDENTITY_WEIGHT = 0.25  # identity loss beside the pixel loss (which is about 0.2-0.3 once trained a little)
IDENTITY_LAYERS = (1, 3, 5, 7)  # face-net trunk blocks whose outputs are compared
DECODER_STAGE = "vae-decoder"  # stage 2: the decoder alone, the encoder frozen
DECODER_SEED_OFFSET = 1000
INIT_RECORD = "vae-decoder.init.json"  # in --work: the stage-1 file a decoder stage started from


def build_taesd(seed: int = 0) -> torch.nn.Module:
    import comfy.taesd.taesd

    from realisid.mini import family

    model = comfy.taesd.taesd.TAESD(latent_channels=family.LATENT_CHANNELS)
    training.init_like_torch(model, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        # SkipInit: every block starts as the identity (its last conv at zero), so the network first trains as a
        # shallow one. Measured on the Mini world (face PSNR, mean over 50 steps): about +0.5 to +1 dB in the first
        # 300 steps, the same as the plain init by step 450; kept because it never hurt
        for sub in model.modules():
            if isinstance(sub, comfy.taesd.taesd.Block):
                sub.conv[4].weight.zero_()
                sub.conv[4].bias.zero_()
        model.vae_scale.fill_(1.0)
        model.vae_shift.fill_(0.0)
    model.vae_scale.requires_grad_(False)
    model.vae_shift.requires_grad_(False)
    return model


def face_weight_map(scene: world.Scene) -> np.ndarray:
    """(H, W) float32: 1 + FACE_WEIGHT inside every face's square (FACE_MARGIN x its side), 1 elsewhere."""
    weight = np.ones(scene.image.shape[:2], np.float32)
    for face in scene.faces:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        half = (face.box[2] - face.box[0]) * FACE_MARGIN / 2
        y0, y1 = int(max(0, cy - half)), int(min(weight.shape[0], cy + half))
        x0, x1 = int(max(0, cx - half)), int(min(weight.shape[1], cx + half))
        weight[y0:y1, x0:x1] = 1.0 + FACE_WEIGHT
    return weight


class ScenePool:
    """POOL_SIZE scenes of seeds drawn from (seed, pool index), with their face-weight maps."""

    def __init__(self, seed: int, index: int, size: int = POOL_SIZE):
        rng = np.random.default_rng([seed, 7919, index])
        self.scenes = [world.random_scene(int(s)) for s in rng.integers(0, 2**31, size)]
        self.weights = [face_weight_map(s) for s in self.scenes]


def sample_patches(pool: ScenePool, rng: np.random.Generator, batch: int, patch: int):
    """(B, 3, P, P) images in [0, 1], (B, 1, P, P) weights and (B, 4) face boxes in patch pixels (NaN for a patch
    not centred on a face); FACE_PATCHES of every 4 patches are centred on a face (jittered)."""
    images, weights, boxes = [], [], []
    for i in range(batch):
        k = int(rng.integers(len(pool.scenes)))
        scene, weight = pool.scenes[k], pool.weights[k]
        size = scene.image.shape[0]
        face = scene.faces[int(rng.integers(len(scene.faces)))] if i % 4 < FACE_PATCHES and scene.faces else None
        if face is not None:
            cx = (face.box[0] + face.box[2]) / 2 + rng.uniform(-0.25, 0.25) * patch
            cy = (face.box[1] + face.box[3]) / 2 + rng.uniform(-0.25, 0.25) * patch
        else:
            cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        # patches start on the 8 px latent grid, as the full image's cells do
        x0 = int(np.clip(round((cx - patch / 2) / 8) * 8, 0, size - patch))
        y0 = int(np.clip(round((cy - patch / 2) / 8) * 8, 0, size - patch))
        images.append(scene.image[y0:y0 + patch, x0:x0 + patch])
        weights.append(weight[y0:y0 + patch, x0:x0 + patch])
        boxes.append(face.box - np.array([x0, y0, x0, y0]) if face is not None else np.full(4, np.nan))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    w = torch.from_numpy(np.stack(weights))[:, None]
    return x, w, torch.from_numpy(np.stack(boxes)).float()


def reconstruction_loss(model: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, boxes: torch.Tensor | None = None,
                        facenet: facenets.FaceNet | None = None) -> tuple[torch.Tensor, dict]:
    recon = model.taesd_decoder(model.taesd_encoder(x))
    err = recon - x
    loss = (w * err.abs()).mean() + (w * err.square()).mean()
    metrics = {"pixel": float(loss.detach())}
    if facenet is not None and boxes is not None:
        has_face = ~torch.isnan(boxes[:, 0])
        if bool(has_face.any()):
            ident = identity_loss(facenet, x[has_face], recon[has_face], boxes[has_face])
            loss = loss + IDENTITY_WEIGHT * ident
            metrics["identity"] = float(ident.detach())
    with torch.no_grad():
        face = w > 1
        face_mse = float(err.square().mean(1, keepdim=True)[face].mean()) if bool(face.any()) else float("nan")
        metrics["psnr_face"] = float(-10 * np.log10(max(face_mse, 1e-10)))
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def face_crops(images: torch.Tensor, boxes: torch.Tensor, size: int = crops.CROP) -> torch.Tensor:
    """Differentiable crops.crop: the square of box x crops.EXPAND around each box, zero outside the image."""
    _, _, h, w = images.shape
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values * crops.EXPAND
    theta = torch.zeros(len(boxes), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side / w, side / h
    theta[:, 0, 2], theta[:, 1, 2] = 2 * centre[:, 0] / w - 1, 2 * centre[:, 1] / h - 1
    grid = torch.nn.functional.affine_grid(theta, [len(boxes), 3, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _face_net_reading(facenet: facenets.FaceNet, crop: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    flat, feats = facenet.crop_net.with_features(crop, IDENTITY_LAYERS)
    return feats, facenet.heads(flat)


def identity_loss(facenet: facenets.FaceNet, x: torch.Tensor, recon: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """What the face net reads in the reconstruction's face crop against the original's: trunk features (each
    layer's MSE relative to the original's energy), landmarks (crop units) and the identity embedding (cosine)."""
    with torch.no_grad():
        ref_feats, ref = _face_net_reading(facenet, face_crops(x, boxes))
    feats, out = _face_net_reading(facenet, face_crops(recon, boxes))
    loss = sum((f - r).square().mean() / r.square().mean().clamp_min(1e-6) for f, r in zip(feats, ref_feats,
                                                                                           strict=True))
    loss = loss / len(feats) + 10 * (out["landmarks"] - ref["landmarks"]).abs().mean()
    return loss + (1 - (out["embedding"] * ref["embedding"]).sum(1)).mean()


def load_facenet() -> facenets.FaceNet:
    """The shipped Mini face net (models/mini/faces), frozen: the committed file, so the VAE can be retrained from
    the repository alone (a --work folder's face-net state is scratch and does not outlive its machine)."""
    from realisid.mini import files

    net = facenets.FaceNet()
    files.load_networks(files.FACES_DIR / files.FACES_FILE, "faces", {"facenet": net})
    return net.eval().requires_grad_(False)


class VaeNets(torch.nn.Module):
    """What the VAE's training state holds: the trained TAESD and its EMA copy (the one exported)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.vae, self.ema = model, copy.deepcopy(model)
        self.ema.requires_grad_(False)


def train(work: str, steps: int, seed: int = 0, batch: int = 8, patch: int = 64, lr: float = 1e-3) -> dict:
    """Stage 1, encoder and decoder together. Constant LR after warm-up, so the stage can be extended across
    sessions (`--steps` larger, resumed) and still be one schedule; the EMA copy does the annealing."""
    if decoder_stage_started(work):
        raise ValueError(f"{work}: the decoder stage has started, so the encoder (the latent space the base is "
                         f"trained on) is final; extend the decoder stage instead (train vae-decoder)")
    nets = VaeNets(build_taesd(seed))
    params = [p for p in nets.vae.parameters() if p.requires_grad]
    return _run_stage(work, "vae", nets, params, steps, seed, batch, patch, lr)


def train_decoder(work: str, steps: int, seed: int = 0, batch: int = 8, patch: int = 64, lr: float = 1e-3,
                  init: str | None = None) -> dict:
    """Stage 2: the decoder alone, from stage 1's EMA weights, with stage 1's EMA encoder frozen. The latent space
    then never changes again, so the base model and the branches can be trained on it while the decoder still
    improves (as SD's VAE decoders were fine-tuned after the fact with the encoder kept). Stage 1 is `work`'s own
    state, or `init`: an exported stage-1 VAE file (the committed one, whose encoder made the base's latents)."""
    nets = VaeNets(stage_one_model(work, seed, init))  # comes frozen: only its decoder trains
    params = list(nets.vae.taesd_decoder.requires_grad_(True).parameters())
    # another noise stream than stage 1's, whose patches the decoder has already seen in that order
    return _run_stage(work, DECODER_STAGE, nets, params, steps, seed + DECODER_SEED_OFFSET, batch, patch, lr)


def decoder_stage_started(work: str) -> bool:
    return (Path(work) / f"{DECODER_STAGE}.state.pt").exists()


def stage_one_model(work: str, seed: int = 0, init: str | None = None) -> torch.nn.Module:
    """Stage 1's EMA TAESD for the decoder stage: `work`'s stage-1 state, or the stage-1 file `init` (recorded in
    `work` at the start, so a resumed run and the export read the same one)."""
    record_path = Path(work) / INIT_RECORD
    if init is None and record_path.exists():
        init = json.loads(record_path.read_text())["path"]
    if init is None:
        return joint_stage_model(work, seed)
    if (Path(work) / "vae.state.pt").exists():
        raise ValueError(f"{work} holds its own stage 1 (vae.state.pt), and --init {init} names another: train the "
                         f"decoder stage in a new --work folder, or drop --init to continue this folder's stage 1")
    return init_file_model(work, init, seed)


def init_file_model(work: str, init: str, seed: int = 0) -> torch.nn.Module:
    """An exported stage-1 VAE file, frozen; its hash is recorded in `work` on first use and checked after."""
    from realisid.mini import files

    digest = hashlib.sha256(Path(init).read_bytes()).hexdigest()
    record_path = Path(work) / INIT_RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["sha256"] != digest:
            raise ValueError(f"{init} is not the stage-1 file this decoder stage started from ({record['path']}, "
                             f"sha256 {record['sha256'][:12]}...): restore that file, or start a new --work folder")
    info = files.read_info(init, "vae")
    if DECODER_STAGE in info.get("training", {}):
        raise ValueError(f"{init} already holds a trained decoder stage: start the decoder stage from the stage-1 "
                         f"file (git history of models/mini/vae/{files.VAE_FILE}), so the run reproduces")
    model = build_taesd(seed)
    files.load_networks(init, "vae", {"vae": model})
    if not record_path.exists():
        Path(work).mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps({"path": str(init), "sha256": digest, "info": info}))
    return model.requires_grad_(False)


def stage_one_info(work: str) -> dict | None:
    """The stage-1 file's metadata (training record, latent statistics) when the decoder stage started from one."""
    record_path = Path(work) / INIT_RECORD
    return json.loads(record_path.read_text())["info"] if record_path.exists() else None


def joint_stage_model(work: str, seed: int = 0) -> torch.nn.Module:
    """Stage 1's EMA TAESD (the one exported), from `work/vae.state.pt`."""
    path = Path(work) / "vae.state.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train the VAE's first stage (train vae) before its decoder stage")
    nets = VaeNets(build_taesd(seed))
    nets.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return nets.ema


def _run_stage(work: str, name: str, nets: VaeNets, params: list, steps: int, seed: int, batch: int, patch: int,
               lr: float) -> dict:
    facenet = load_facenet()
    optimizer = torch.optim.Adam(params, lr=lr)
    run = training.ResumableRun(work, name, nets, optimizer, seed)
    pools: dict[int, ScenePool] = {}

    def step_fn(step: int) -> dict:
        index = step // POOL_STEPS
        if index not in pools:
            pools.clear()
            pools[index] = ScenePool(seed, index)
        x, w, boxes = sample_patches(pools[index], training.step_rng(seed, step), batch, patch)
        loss, metrics = reconstruction_loss(nets.vae, x, w, boxes, facenet)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        training.update_ema(nets.vae, nets.ema, step, EMA_DECAY)
        return metrics

    run.run(steps, step_fn, save_every=50, lr_at=training.warmup_constant(lr, 100))
    return {"model": nets.ema, "record": run.record()}


@torch.no_grad()
def calibrate(model: torch.nn.Module, seed: int = 12345, n: int = 48) -> tuple[float, float]:
    """Set vae_scale / vae_shift so that encode() gives zero-mean, unit-variance latents on Mini scenes."""
    images = np.stack([world.random_scene(seed + i).image for i in range(n)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    raw = torch.cat([model.taesd_encoder(x[i:i + 8]) for i in range(0, n, 8)])
    mean, std = float(raw.mean()), float(raw.std())
    model.vae_scale.fill_(std)
    model.vae_shift.fill_(-mean / std)
    return mean, std


@torch.no_grad()
def encode(model: torch.nn.Module, images_uint8: np.ndarray, batch: int = 8) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, C, H/8, W/8) normalised latents (TAESD.encode semantics, ComfyUI's input range)."""
    out = []
    for i in range(0, len(images_uint8), batch):
        x = torch.from_numpy(np.ascontiguousarray(images_uint8[i:i + batch])).permute(0, 3, 1, 2).float() / 255.0
        out.append(model.encode(x * 2 - 1))
    return torch.cat(out)


@torch.no_grad()
def decode(model: torch.nn.Module, latents: torch.Tensor, batch: int = 8) -> np.ndarray:
    """Normalised latents -> (N, H, W, 3) uint8."""
    out = []
    for i in range(0, len(latents), batch):
        x = (model.decode(latents[i:i + batch]) + 1) / 2
        out.append((x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)
