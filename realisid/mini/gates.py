"""The RealisID-Mini gates: each stage measured, on held-out identities, before the next is trained.

* ceiling: the judge on ground-truth renders (what a perfect generator would score);
* vae: the judge on VAE reconstructions of the same renders;
* faces: the Mini detector's box IoU and the face net's identity verification ROC AUC.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from realisid.mini import head, world
from realisid.mini.identity import ATTRIBUTES, random_identity

GATE_SIDES = {"1/4": 1 / 4, "1/7": 1 / 7}
DETECTION_SIDES = {"1/8": 1 / 8, "1/6": 1 / 6, "1/4": 1 / 4, "1/3": 1 / 3}
YAW_BINS = (-15.0, 15.0)  # yaw bins: left of -15, frontal, right of +15 degrees


def single_person_scenes(side_fraction: float, n: int, seed: int, split: str = "held_out") -> list[world.Scene]:
    """n one-person scenes of `split` identities with the face at `side_fraction`, anywhere, any pose/expression."""
    rng = np.random.default_rng([seed, int(round(side_fraction * 1000))])
    return [render_identity(random_identity(rng, split), side_fraction, rng) for _ in range(n)]


def yaw_bin(yaw: float) -> int:
    return int(np.searchsorted(YAW_BINS, yaw))


@dataclasses.dataclass
class JudgeScores:
    """Accuracy of the judge per identity attribute, expression and yaw bin; pose mean absolute errors."""

    n: int
    attributes: dict[str, float]
    expression: float
    yaw_bin: float
    pose_mae: dict[str, float]
    mean_confidence: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def score_readings(readings: list[dict], truths: list[world.FaceTruth]) -> JudgeScores:
    attrs = {name: float(np.mean([r["attributes"][name] == getattr(t.identity, name)
                                  for r, t in zip(readings, truths, strict=True)])) for name in ATTRIBUTES}
    expr = float(np.mean([r["expression"] == t.expression for r, t in zip(readings, truths, strict=True)]))
    ybin = float(np.mean([yaw_bin(r["pose"].yaw) == yaw_bin(t.pose.yaw) for r, t in zip(readings, truths, strict=True)]))
    mae = {k: float(np.mean([abs(getattr(r["pose"], k) - getattr(t.pose, k)) for r, t in zip(readings, truths, strict=True)]))
           for k in ("yaw", "pitch", "roll")}
    conf = float(np.mean([np.mean(list(r["confidence"].values())) for r in readings]))
    return JudgeScores(len(truths), attrs, expr, ybin, mae, conf)


def judge_on(judge, images: list[np.ndarray], scenes: list[world.Scene]) -> JudgeScores:
    """The judge on `images` (renders or their reconstructions) at the scenes' true face boxes."""
    truths = [s.faces[0] for s in scenes]
    return score_readings(judge.read(images, [t.box for t in truths]), truths)


def ceiling(judge, n: int = 200, seed: int = 31) -> dict[str, JudgeScores]:
    out = {}
    for label, side in GATE_SIDES.items():
        scenes = single_person_scenes(side, n, seed)
        out[label] = judge_on(judge, [s.image for s in scenes], scenes)
    return out


def vae_round_trip(vae_model, images: list[np.ndarray]) -> list[np.ndarray]:
    from realisid.mini import vae

    return list(vae.decode(vae_model, vae.encode(vae_model, np.stack(images))))


def vae_gate(judge, vae_model, n: int = 200, seed: int = 31) -> dict[str, JudgeScores]:
    """The judge on VAE reconstructions of the ceiling's scenes (same seeds, so the two compare face by face)."""
    out = {}
    for label, side in GATE_SIDES.items():
        scenes = single_person_scenes(side, n, seed)
        out[label] = judge_on(judge, vae_round_trip(vae_model, [s.image for s in scenes]), scenes)
    return out


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def best_match(records, box) -> tuple[object | None, float]:
    """The detected record with the highest IoU against `box`, and that IoU."""
    best, best_iou = None, 0.0
    for rec in records:
        iou = box_iou(rec.box, box)
        if iou > best_iou:
            best, best_iou = rec, iou
    return best, best_iou


def detection_gate(analyzer, n: int = 100, seed: int = 41) -> dict[str, dict]:
    """Per face size: the fraction of true faces matched by a detection with IoU >= 0.7, the mean IoU, and the
    number of extra detections, on held-out scenes of 1 to 3 people."""
    out = {}
    for label, side in DETECTION_SIDES.items():
        rng = np.random.default_rng([seed, int(round(side * 1000))])
        ious, extra, faces = [], 0, 0
        for _ in range(n):
            spec = world.random_spec(rng, split="held_out", side_range=(side * 0.97, side * 1.03))
            scene = world.render_scene(spec)
            records = analyzer.analyze(scene.image)
            extra += max(0, len(records) - len(scene.faces))
            for face in scene.faces:
                ious.append(best_match(records, face.box)[1])
                faces += 1
        ious = np.array(ious)
        out[label] = {"faces": faces, "iou>=0.7": float((ious >= 0.7).mean()), "mean_iou": float(ious.mean()),
                      "extra_detections": int(extra)}
    return out


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > that of a random negative), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def verification_gate(analyzer, n_identities: int = 100, seed: int = 51) -> dict[str, dict]:
    """ROC AUC of the embedding's cosine: two renders of one held-out identity (other scene, pose, expression)
    against pairs of different identities, at each gate face size."""
    out = {}
    for label, side in GATE_SIDES.items():
        rng = np.random.default_rng([seed, int(round(side * 1000))])
        embeddings = []
        for _ in range(n_identities):
            ident = random_identity(rng, "held_out")
            pair = []
            for _ in range(2):
                scene = render_identity(ident, side, rng)
                rec, _iou = best_match(analyzer.analyze(scene.image), scene.faces[0].box)
                pair.append(None if rec is None else rec.embedding)
            embeddings.append(pair)
        valid = [p for p in embeddings if p[0] is not None and p[1] is not None]
        same = np.array([float(a @ b) for a, b in valid])
        diff = np.array([float(valid[i][0] @ valid[(i + 1) % len(valid)][1]) for i in range(len(valid))])
        out[label] = {"pairs": len(valid), "missed": len(embeddings) - len(valid), "auc": roc_auc(same, diff),
                      "mean_same": float(same.mean()), "mean_different": float(diff.mean())}
    return out


def render_identity(identity, side_fraction: float, rng: np.random.Generator) -> world.Scene:
    """One person of this identity, anywhere, in a random pose, expression, clothing and place."""
    side = side_fraction * world.SIZE
    person = world.PersonSpec(identity=identity, cx=rng.uniform(side / 2 + 2, world.SIZE - side / 2 - 2),
                              cy=rng.uniform(side / 2 + 2, world.SIZE - side / 2 - 2), side=side,
                              pose=head.random_pose(rng), expression=str(rng.choice(head.EXPRESSIONS)),
                              clothing=str(rng.choice(list(world.CLOTHES))))
    return world.render_scene(world.SceneSpec(people=(person,), place=str(rng.choice(world.PLACES)),
                                              seed=int(rng.integers(2**31))))


def sample_base(checkpoint_path: str, captions: list[str], seed: int, steps: int = 20, cfg: float = 4.0,
                batch: int = 4) -> list[np.ndarray]:
    """Text-only samples of a Mini base checkpoint through ComfyUI's own loader and sampler (euler, normal)."""
    import comfy.sample
    import comfy.sd
    import torch

    from realisid.mini import family

    patcher, clip, vae_model = comfy.sd.load_checkpoint_guess_config(checkpoint_path, output_vae=True,
                                                                      output_clip=True)[:3]

    def encode(texts):
        out = [clip.encode_from_tokens(clip.tokenize(t), return_pooled=True) for t in texts]
        return torch.cat([c for c, _ in out]), torch.cat([p for _, p in out])

    images = []
    for start in range(0, len(captions), batch):
        texts = captions[start:start + batch]
        cond, pooled = encode(texts)
        uncond, upooled = encode([""] * len(texts))
        latent = torch.zeros(len(texts), family.LATENT_CHANNELS, world.SIZE // 8, world.SIZE // 8)
        noise = comfy.sample.prepare_noise(latent, seed + start)
        samples = comfy.sample.sample(patcher, noise, steps, cfg, "euler", "normal",
                                      [[cond, {"pooled_output": pooled}]], [[uncond, {"pooled_output": upooled}]],
                                      latent, seed=seed + start, disable_pbar=True)
        decoded = vae_model.decode(samples)
        images += list((decoded.clamp(0, 1) * 255).round().byte().cpu().numpy())
    return images


def save_grid(images: list[np.ndarray], path: str, columns: int) -> None:
    """Equal-sized HxWx3 images in rows of `columns` (the last row padded with white)."""
    from PIL import Image

    if not images:
        raise ValueError("save_grid needs at least one image")
    blank = np.full_like(images[0], 255)
    cells = list(images) + [blank] * (-len(images) % columns)
    rows = [np.concatenate(cells[i:i + columns], axis=1) for i in range(0, len(cells), columns)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def base_gate(analyzer, judge, checkpoint_path: str, n: int = 200, seed: int = 61,
              samples_png: str | None = None) -> dict:
    """n text-only samples from training-style captions: does the Mini detector find the requested number of
    people, and how confidently does the judge read the faces (against its confidence on real renders)?
    `samples_png`: also save the first 16 samples as a 2 x 8 grid (the model card's picture of the base)."""
    import time

    rng = np.random.default_rng(seed)
    specs = [world.random_spec(rng, split="held_out") for _ in range(n)]
    start = time.perf_counter()
    images = sample_base(checkpoint_path, [world.caption(s) for s in specs], seed)
    seconds = (time.perf_counter() - start) / n
    if samples_png is not None:
        save_grid(images[:16], samples_png, columns=8)
    found, confidences = [], []
    for spec, image in zip(specs, images, strict=True):
        records = analyzer.analyze(image)
        found.append(len(records) == len(spec.people))
        if records:
            readings = judge.read([image] * len(records), [r.box for r in records])
            confidences += [float(np.mean(list(r["confidence"].values()))) for r in readings]
    rendered = [world.render_scene(s) for s in specs[:50]]
    real = judge.read([s.image for s in rendered for _ in s.faces], [f.box for s in rendered for f in s.faces])
    return {"n": n, "count_correct": float(np.mean(found)), "judge_confidence_samples": float(np.mean(confidences or [0])),
            "judge_confidence_renders": float(np.mean([np.mean(list(r["confidence"].values())) for r in real])),
            "seconds_per_image": seconds}
