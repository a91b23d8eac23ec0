"""The RealisID-Mini model card (models/mini/README.md), written from the files' metadata and gates.json, so every
figure in it is the one measured (`python -m realisid.mini card`)."""

from __future__ import annotations

import json
from pathlib import Path

from realisid.mini import family, files
from realisid.mini.identity import ATTRIBUTES, N_IDENTITIES

# the gates of the issue that defined RealisID-Mini, checked here against the measured figures
CEILING_MIN_AT_QUARTER = 0.95
VAE_MAX_DROP = {"1/4": 0.03, "1/7": 0.05}
DETECTION_MIN = 0.95
VERIFICATION_MIN_AUC = 0.99
BASE_MIN_COUNT = 0.90  # text-only samples in which the Mini detector finds the requested number of people

INTRO = """# RealisID-Mini: model card

A miniature world where RealisID can be trained and measured on a CPU: seeded 256 x 256 cartoon scenes of one to
three people (`realisid/mini/world.py`), the networks that read and draw them, and (in later stages) a base
text-to-image model and a RealisID model trained with this pack's own code. **Cartoon world, not photos**: what it
shows is whether the method's mechanisms work (identity kept on small faces, location, pose, several people) with
ground truth for everything; no figure here says anything about photographs or SDXL.

Identity lives in the head only (bodies wear turtlenecks and gloves): {n_attr} attributes, {n_ids:,} identities;
identities whose index is a multiple of 10 are **held out** from every network's training data, and every gate
below is measured on them. Captions name people count, framing, place and clothing, never identity.

| file | networks | size |
|---|---|---|
"""


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _variant_rows() -> list[str]:
    """Issue 14's trained variants (models/mini/variants/, read by `python -m realisid.mini paper` only)."""
    from realisid.mini import paper

    rows = []
    for key, name in paper.TRAINED.items():
        path = files.VARIANTS_DIR / files.variant_file(key)
        if path.is_file():
            record = next(iter(files.read_info(path, "realisid").get("training", {}).values()), {})
            took = f", {record['seconds'] / 60:.0f} min, seed {record['seed']}" if "seconds" in record else ""
            rows.append(f"| `{path.relative_to(files.MODELS_DIR)}` | issue-14 variant: {name}{took} (read by "
                        f"`python -m realisid.mini paper` only) | {path.stat().st_size / 1e6:.1f} MB fp16 |")
    return rows


def _training_rows(info: dict) -> list[str]:
    rows = []
    for stage, rec in info.get("training", {}).items():
        minutes = rec["seconds"] / 60
        rows.append(f"| {stage} | {rec['steps']} | {minutes:.0f} min | seed {rec['seed']} | {rec['machine']} |")
    return rows


def _judge_table(gates: dict, key: str) -> list[str]:
    sides = list(gates[key])
    lines = ["| | " + " | ".join(sides) + " |", "|---|" + "---|" * len(sides)]
    for name in ATTRIBUTES:
        lines.append(f"| {name} | " + " | ".join(_fmt(gates[key][s]["attributes"][name]) for s in sides) + " |")
    lines.append("| expression | " + " | ".join(_fmt(gates[key][s]["expression"]) for s in sides) + " |")
    lines.append("| yaw bin | " + " | ".join(_fmt(gates[key][s]["yaw_bin"]) for s in sides) + " |")
    for angle in ("yaw", "pitch", "roll"):
        lines.append(f"| {angle} error (deg) | " + " | ".join(f"{gates[key][s]['pose_mae'][angle]:.1f}"
                                                             for s in sides) + " |")
    lines.append("| mean confidence | " + " | ".join(_fmt(gates[key][s]["mean_confidence"]) for s in sides) + " |")
    return lines


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def _verdicts(gates: dict) -> list[str]:
    out = []
    if "ceiling" in gates:
        worst = min(gates["ceiling"]["1/4"]["attributes"].values())
        out.append(f"* Ceiling: every identity attribute >= {CEILING_MIN_AT_QUARTER} at 1/4: lowest {_fmt(worst)} "
                   f"-> **{_verdict(worst >= CEILING_MIN_AT_QUARTER)}**.")
    if "vae" in gates and "ceiling_vae_sample" in gates:
        for side, limit in VAE_MAX_DROP.items():
            drops = {n: gates["ceiling_vae_sample"][side]["attributes"][n] - gates["vae"][side]["attributes"][n]
                     for n in ATTRIBUTES}
            name, drop = max(drops.items(), key=lambda kv: kv[1])
            out.append(f"* VAE at {side}: largest drop from the ceiling {_fmt(drop)} ({name}), limit {limit} -> "
                       f"**{_verdict(drop <= limit)}**.")
    if "detection" in gates:
        worst = min(v["iou>=0.7"] for v in gates["detection"].values())
        out.append(f"* Detection: IoU >= 0.7 for >= {DETECTION_MIN} of faces at every size: lowest {_fmt(worst)} "
                   f"-> **{_verdict(worst >= DETECTION_MIN)}**.")
    if "verification" in gates:
        auc = gates["verification"]["1/4"]["auc"]
        out.append(f"* Verification ROC AUC at 1/4 >= {VERIFICATION_MIN_AUC}: {_fmt(auc)} -> "
                   f"**{_verdict(auc >= VERIFICATION_MIN_AUC)}** (1/7: "
                   f"{_fmt(gates['verification']['1/7']['auc'])}).")
    if "base" in gates:
        b = gates["base"]
        out.append(f"* Base: the requested number of people found in >= {BASE_MIN_COUNT} of {b['n']} text-only "
                   f"samples: {_fmt(b['count_correct'])} -> **{_verdict(b['count_correct'] >= BASE_MIN_COUNT)}"
                   f"**; the judge's mean confidence on their faces {_fmt(b['judge_confidence_samples'])} (on renders "
                   f"{_fmt(b['judge_confidence_renders'])}); {b['seconds_per_image']:.2f} s per image on this CPU.")
    return out


def write_card(commands: str) -> Path:
    gates = json.loads((files.MODELS_DIR / "gates.json").read_text())
    lines = [INTRO.format(n_attr=len(ATTRIBUTES), n_ids=N_IDENTITIES).rstrip("\n")]
    infos = {}
    for label, path, kind, what in (
            ("faces", files.FACES_DIR / files.FACES_FILE, "faces", "detector (CenterNet, stride 8) + face net "
                                                                   "(box, 68 landmarks, 64-d identity)"),
            ("judge", files.FACES_DIR / files.JUDGE_FILE, "judge", "judge: 9 attributes, expression, pose (metrics "
                                                                   "only)"),
            ("vae", files.VAE_DIR / files.VAE_FILE, "vae", f"TAESD-architecture VAE, 8x, {family.LATENT_CHANNELS} "
                                                           "latent channels, face-weighted"),
            ("base", files.CHECKPOINTS_DIR / files.BASE_FILE, "base", "base: SDXL-architecture UNet (32/64/128 "
                                                                      "channels, v-prediction) + two small CLIP text "
                                                                      "encoders + the VAE, one ComfyUI checkpoint"),
            ("realisid", files.REALISID_DIR / files.REALISID_FILE, "realisid",
             "RealisID-Mini: local + global ControlNet branches and the identity projector (mini face backend's "
             "identity space), trained by `python -m realisid.train fit` on single-person scenes")):
        if path.exists():
            infos[label] = files.read_info(path, kind)
            rel = path.relative_to(files.MODELS_DIR)
            lines.append(f"| `{rel}` | {what} | {path.stat().st_size / 1e6:.1f} MB fp16 |")
    lines += _variant_rows()
    lines += ["", "## Training (each stage resumable and seeded)", "",
              "| stage | steps | time | seed | machine |", "|---|---|---|---|---|"]
    rows = []
    for info in infos.values():  # the base checkpoint repeats the VAE's stages: each stage once
        rows += [row for row in _training_rows(info) if row not in rows]
    lines += rows
    lines += ["", "Commands (from the pack folder, `COMFYUI_DIR` set):", "", "```bash", commands.strip(), "```", "",
              "Loss curves: `curves/`.", ""]
    lines += ["## Gates (held-out identities)", "", *_verdicts(gates), ""]
    if "ceiling" in gates:
        lines += [f"### Ceiling: the judge on ground-truth renders (n = {gates['n']} faces per size)", "",
                  *_judge_table(gates, "ceiling"), ""]
    if "vae" in gates:
        lines += [f"### The judge on VAE reconstructions (n = {gates['n_vae']} per size; ceiling on the same faces "
                  f"beside it)", "", "VAE:", "", *_judge_table(gates, "vae"), "", "Ceiling, same faces:", "",
                  *_judge_table(gates, "ceiling_vae_sample"), ""]
    if "detection" in gates:
        lines += ["### Mini face backend: detection (scenes of 1-3 people)", "",
                  "| face side | faces | IoU >= 0.7 | mean IoU | extra detections |", "|---|---|---|---|---|"]
        for side, v in gates["detection"].items():
            lines.append(f"| {side} | {v['faces']} | {_fmt(v['iou>=0.7'])} | {_fmt(v['mean_iou'])} | "
                         f"{v['extra_detections']} |")
        lines.append("")
    if "verification" in gates:
        lines += ["### Mini face backend: identity verification (two renders of one identity: other scene, pose, "
                  "expression)", "", "| face side | pairs | ROC AUC | mean cos same | mean cos different |",
                  "|---|---|---|---|---|"]
        for side, v in gates["verification"].items():
            lines.append(f"| {side} | {v['pairs']} | {_fmt(v['auc'])} | {_fmt(v['mean_same'])} | "
                         f"{_fmt(v['mean_different'])} |")
        lines.append("")
    behaviour_path = files.MODELS_DIR / "behaviour.json"
    if behaviour_path.exists():
        lines += behaviour_section(json.loads(behaviour_path.read_text()))
    use_path = files.MODELS_DIR / "identity_use.json"
    if use_path.exists():
        lines += identity_use_section(json.loads(use_path.read_text()))
    path = files.MODELS_DIR / "README.md"
    path.write_text("\n".join(lines) + "\n" + STATUS)
    return path


def behaviour_section(b: dict) -> list[str]:
    """The trained model through the real nodes (realisid/mini/behaviour.py), each figure beside its threshold."""
    t = b["thresholds"]
    ident = b["identity"]
    lines = [f"## Behaviour of RealisID-Mini (held-out identities, through the nodes; n = {b['n_per_cell']} "
             f"cases per cell, seed {b['seed']}, {b['seconds_per_image']:.1f} s per image on this CPU)", "",
             "Identity: the fraction of the 9 attributes the judge reads right in the generated face, against the "
             "reference's true attributes, divided by the judge's ceiling on real renders of that size. 'Shuffled' "
             "scores the same faces against another held-out person (measured chance); uniform chance is "
             f"{b['chance_uniform']:.3f}.", "",
             "| variant | face side | faces | attribute match | / ceiling | shuffled | face found |",
             "|---|---|---|---|---|---|---|"]
    for key, v in ident.items():
        variant, side = key.rsplit(" ", 1)
        lines.append(f"| {variant} | {side} | {v['n']} | {_fmt(v['attribute_match'])} | {_fmt(v['ratio'])} | "
                     f"{_fmt(v['shuffled'])} | {_fmt(v['found'])} |")
    lines += ["", "Thresholds (issue 13):", ""]
    for side, key in (("1/4", "identity_ratio_1/4"), ("1/7", "identity_ratio_1/7")):
        if f"full {side}" in ident:
            ratio = ident[f"full {side}"]["ratio"]
            lines.append(f"* Identity, full model at {side}: {_fmt(ratio)} of the ceiling, threshold >= {t[key]} -> "
                         f"**{_verdict(ratio >= t[key])}**.")
    loc = b["location"]
    lines.append(f"* Location: IoU >= {t['location_iou']} for {_fmt(loc['rate'])} of {loc['n']} requested faces "
                 f"(1-3 people; by count {', '.join(f'{k}: {_fmt(v)}' for k, v in loc['by_persons'].items())}), "
                 f"threshold >= {t['location_rate']} -> **{_verdict(loc['rate'] >= t['location_rate'])}**.")
    if "pose" in b:
        p = b["pose"]
        lines.append(f"* Pose and expression with a driving face ({p['n']} faces): expression = the driver's in "
                     f"{_fmt(p['expression_rate'])} (>= {t['expression_rate']} -> "
                     f"**{_verdict(p['expression_rate'] >= t['expression_rate'])}**), mean yaw error "
                     f"{p['yaw_error_deg']:.1f} deg (<= {t['yaw_error_deg']} -> "
                     f"**{_verdict(p['yaw_error_deg'] <= t['yaw_error_deg'])}**); copy-paste (the reference's "
                     f"expression instead): {_fmt(p['copy_paste_rate'])}.")
    if "pose_without_driver" in b:
        p = b["pose_without_driver"]
        lines.append(f"* Without a driver ({p['n']} faces): the reference's own expression in "
                     f"{_fmt(p['expression_rate'])} (>= {t['expression_rate']} -> "
                     f"**{_verdict(p['expression_rate'] >= t['expression_rate'])}**), yaw error "
                     f"{p['yaw_error_deg']:.1f} deg.")
    for count, v in b.get("binding", {}).items():
        lines.append(f"* Binding, {count} people ({v['n']} faces): each box's face nearest its own reference in "
                     f"{_fmt(v['rate'])} (>= {t['binding_rate']} -> **{_verdict(v['rate'] >= t['binding_rate'])}**); "
                     f"attribute match {_fmt(v['identity'])}, face found {_fmt(v['found'])}.")
    return lines + [""]


def identity_use_section(figures: dict) -> list[str]:
    """`python -m realisid.mini identity-use` per model and reference recipe (realisid/train/identity_use.py)."""
    lines = ["## Identity use: does the model use the identity? (held-out faces, the trainer's loss)", "",
             "The face-box denoising loss of held-out faces with their own identity and with another face's, on "
             "the same noise, timestep and caption (`python -m realisid.mini identity-use`). A model that ignores "
             "the identity scores the same with either; 'gap' is the relative reduction by the face's own identity.",
             "", "| model, references of the held-out faces | faces | own identity | another's | gap | own lower |",
             "|---|---|---|---|---|---|"]
    for label, v in figures.items():
        lines.append(f"| {label} | {v['n']} | {_fmt(v['face_mse_own'])} | {_fmt(v['face_mse_other'])} | "
                     f"{100 * v['gap']:.1f} % | {_fmt(v['win_rate'])} |")
    return lines + [""]


STATUS = """## Status and what it does not show

* Trained and gated: the world, the Mini face backend (`mini` in RealisID Face Analysis) and the judge.
* The VAE (`vae/mini_vae.safetensors`, the same weights in the base checkpoint): stage 1, encoder + decoder,
  5,000 steps, trained with a face-weighted pixel loss plus an identity loss through the shipped face net (pixel
  losses alone, in an earlier run, left eye colour at 0.50 / 0.20 at 1/4 / 1/7 after 1,000 steps); stage 2, the
  decoder alone, 4,000 steps (36 min, 2 threads) from stage 1's committed file with its encoder frozen, so the
  latents the base and the branches were trained on are unchanged bit for bit (`export vae` swaps only the decoder
  into the base checkpoint, and checks the encoder). Stage 2 lowered the training loss slowly (face PSNR +0.6 dB);
  on the gate's 200 faces per size (the same faces for both decoders) the largest drop from the ceiling went from
  0.145 (glasses) to 0.080 (brows) at 1/4 and from 0.395 (nose) to 0.285 (brows, glasses) at 1/7, the mean
  attribute accuracy from 0.937 to 0.963 and from 0.802 to 0.840, the expression from 0.79 to 0.81 and from 0.49
  to 0.52. The gate (drop <= 0.03 at 1/4 and <= 0.05 at 1/7) still **fails**, mostly at 1/7, where a face is
  4.6 latent cells wide and brows, glasses and nose are lost
  (table above). The decoder's loss was still falling slowly at step 4,000 (`curves/curve_vae-decoder.png`), so
  more decoder steps may gain a little; whatever the frozen encoder drops no decoder can restore, and changing
  the encoder means retraining the base and the branches (or drawing bolder features in the world).
* The base (text encoders + UNet, `checkpoints/realisid_mini_base.safetensors`), two stages on the same 4,000
  training scenes at batch 32 (v-prediction, min-SNR weighting, 10 % caption dropout, EMA exported): stage 1,
  5,350 steps at a constant lr 3e-4 (72 min on 2 CPU threads; at step 2,200 its people count was 0.33 with grainy
  textures); stage 2, warm-started from stage 1's checkpoint (`train base --init`), 2,000 steps with a cosine decay
  from 3e-4 to 3e-5 after 200 warm-up steps (36 min, 2 threads, this session's 2-core AMD EPYC; training loss
  0.0271 over its first 250 steps, 0.0231 over its last 500; `curves/curve_base_stage2.png`). Its samples draw the
  place, the shirt colours and people with heads, but faces are still distorted: the people count is right in
  **0.445** of 200 samples (stage 1: 0.385 on the same captions and seeds; gate >= 0.90: **fails**; the first 16
  samples: `curves/base_samples.png`). The gain is small and uncertain: on the first 60 of these captions stage 2
  scored 0.40 and stage 1 0.45. Misses are mostly fewer faces than asked (stage 2, those 60: no face found for 8
  of 31 one-person captions, two for 9 of 15 three-person ones), a few more; the detector counts renders of the
  same specs right in 60 of 60, and CFG 7 instead of 4 did not help (stage 1: 0.38 against 0.45). The branches were trained on stage 1 and are not retrained on stage 2;
  every figure below is measured with stage 2 (a `fit --init` stage on it is the next step).
* RealisID-Mini (`realisid/realisid_mini.safetensors`, 11.9 MB fp16): the local and global branches and the
  identity projector (5.9 M parameters), trained by the pack's own `python -m realisid.train fit` (the shared
  forward, noise MSE + face-box MSE, 5 % image / text / both dropout) on the shipped base and 4,000 single-person
  scenes of training identities, batch 8, lr 2e-4 after 100 warm-up steps, in four stages (table above):
  1,765 steps with "other" references (77 min, 2 threads); then both reference recipes continued from that file
  at an equal budget, 1,200 steps each side by side on one thread each (52 and 59 min); then the chosen recipe
  2,500 more steps (2 threads, VAE latents pre-computed once by `encode-latents`: 0.73 s per step instead of about
  4 s while a run encodes its own); then 4,500 more with a cosine decay to 0.1 x lr (78 min, 2 threads, other
  processes sharing the machine). 9,965 steps in all (3 h 58 min for the shipped chain). Identity source: the
  mini face backend's 64-d embedding, declared in the checkpoint (`identity_space: mini-facenet-64`). Curves:
  `curves/curve_realisid.png` (stage 1), `_stage2`, `_stage3`, `_stage4`. A later stage continues with
  `fit --init`.
* **The two reference recipes, measured** (stage 2, the same scenes, seed and steps; "other": each scene's
  reference is another render of the same identity; "self", the paper's: the target is its own reference).
  Identity use (table above, 128 held-out faces): a 17.4 % gap for "other" and 17.3 % for "self" with other-render
  references, 17.5 % and 18.0 % with self references, so identity is learnt equally. Through the nodes (12 cases
  per cell, full model): identity / ceiling 0.392 and 0.392 at 1/4, 0.329 and 0.348 at 1/7; faces in their box
  (IoU >= 0.6) 0.667 and 0.611; expression copied from the reference instead of the driver ("copy-paste") 0.17
  and 0.25. Differences this small are within the noise of 12 cases. "Other" is shipped: it ties on identity,
  copies the reference less, and cannot be solved by copying the reference at all (which matters with pixel
  identity sources such as CLIP tokens, where "self" can paste the face).
* What the behaviour figures say (above; measured with the VAE's stage-2 decoder and base stage 2): the branches
  act on **where** and **how the head is turned**, and measurably use the identity in denoising (identity use: a
  39.1 % gap on base stage 2, 35.8 % on stage 1 after the branches' stage 4, 26.3 % after their stage 3, 12.1 %
  after their stage 1), and the judge reads part of it in the generated faces: attribute match / ceiling 0.523
  at 1/4 and 0.574 at 1/7, against 0.364 / 0.273 for the text-only base and 0.250 / 0.296 for another person's
  attributes (on base stage 1: 0.532 / 0.499, text-only 0.317 / 0.292; stage 3 of the branches: 0.495 / 0.471;
  their stage 1: 0.35 / 0.36, at chance). Stage 4's longer, decayed training moved location (IoU >= 0.6 for 0.81
  of 96 faces, stage 3 0.64), binding (0.75 / 0.67 for 2 / 3 people, stage 3 0.71 / 0.56) and the yaw error with
  a driver (10.9 degrees, stage 3 14.2), not identity at 1/4. Base stage 2 under the same branches (not
  retrained) moved location to **0.885** of 96 faces (base stage 1: 0.82; 1.00 / 0.88 / 0.78 for 1 / 2 / 3
  people) and the yaw error with a driver to 10.1 degrees (11.0), binding 0.75 / 0.61 (0.79 / 0.58) and identity
  within the noise of 12 cases. The expression does not follow the driver (0.25, chance 0.25; the VAE itself
  keeps the expression in only 0.81 / 0.52 of faces at 1/4 / 1/7, its gate above). Below every threshold of
  issue 13 at this training length but the driven yaw error in CI; the base itself draws distorted faces (its
  gate above), which caps what any branch can show. The thresholds stay as stated; the CI tests that miss them
  are marked xfail(strict) with the measured figure (two-person binding passes in CI, 15 of 16 faces, against
  0.75 of 24 here: within the noise).
* Sampling settings (seed 5, 8 cases per cell, the stage-3 model): text 4 / identity 3 / delay 0.2 (the
  workflows' defaults) gave identity / ceiling 0.56 / 0.40 at 1/4 / 1/7 and location 0.83; identity 6: 0.63 /
  0.44, 0.75; identity 9: 0.63 / 0.42, 0.67; delay 0: 0.63 / 0.41, 0.79; text 2: 0.59 / 0.38, 0.83. Every
  difference is within the noise of 8 cases, so the defaults stay.
* The paper's claims per variant, with 95 % intervals: `docs/results-mini.md` (`python -m realisid.mini paper`).
* A cartoon world: flat colours, a fixed head model, nine discrete attributes. Figures here do not transfer to photos.
"""
