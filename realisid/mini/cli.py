"""Command line of RealisID-Mini: one seeded, resumable command per training stage, its export, and the gates.

    python -m realisid.mini train vae --work W --steps 3500          # encoder + decoder
    python -m realisid.mini train vae-decoder --work W --steps N     # the decoder alone, the encoder frozen
    python -m realisid.mini train detector|facenet|judge --work W --steps N
    python -m realisid.mini export faces|judge|vae --work W          # fp16 files into models/mini/
    python -m realisid.mini encode --work W --shards 10              # VAE latents of training scenes
    python -m realisid.mini train base --work W --steps N            # text encoders + UNet
    python -m realisid.mini gates --out models/mini/gates.json       # the model card's figures
    python -m realisid.mini inputs                                   # bundled example inputs (seeded)
    python -m realisid.mini behaviour --out models/mini/behaviour.json  # the trained model through the nodes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)
STAGES = ("vae", "vae-decoder", "detector", "facenet", "judge", "base")
EXPORTS = ("faces", "judge", "vae", "base", "realisid")
JUDGE_SEED_OFFSET = 100  # the judge never shares a seed with the face net
CARD_COMMANDS = """
W=mini_work  # any folder: resumable states and curves
python -m realisid.mini --threads 1 train detector --work $W --steps 1200
python -m realisid.mini --threads 1 train facenet --work $W --steps 1000
python -m realisid.mini --threads 1 train judge --work $W --steps 1500
python -m realisid.mini export faces --work $W && python -m realisid.mini export judge --work $W
python -m realisid.mini --threads 2 gates --out models/mini/gates.json --only ceiling detection verification
python -m realisid.mini curves --work $W --stages detector facenet judge && python -m realisid.mini card
# the VAE (its identity loss reads the shipped face net), stage 1: encoder + decoder
python -m realisid.mini --threads 2 train vae --work $W --steps 5000
python -m realisid.mini export vae --work $W && cp models/mini/vae/mini_vae.safetensors $W/vae_stage1.safetensors
python -m realisid.mini --threads 1 gates --out models/mini/gates.json --only ceiling vae --n 50 --n-vae 50
# the base, on latents of the shipped VAE's encoder (8 shards of 500 training scenes)
python -m realisid.mini --threads 2 encode --work $W --shards 8
python -m realisid.mini --threads 2 train base --work $W --steps 5350
python -m realisid.mini export base --work $W && python -m realisid.mini gates --out models/mini/gates.json --only base
# RealisID-Mini (local + global branches + projector) on that base, with the pack's own trainer: 4,000 single-person
# scenes of training identities, each with another render of the same identity as its reference ("other")
python -m realisid.mini scenes --out $W/scenes --n 4000
for s in 0 1; do python -m realisid.train prepare --manifest $W/scenes/manifest.jsonl --out $W/cache_other_$s \\
  --backend mini --size 256 --detect-size 256 --min-face 8 --min-score 0.4 --hint-size 128 --num-shards 2 \\
  --shard-index $s & done; wait
OMP_NUM_THREADS=2 python -m realisid.train fit --base models/mini/checkpoints/realisid_mini_base.safetensors \\
  --cache $W/cache_other_0 $W/cache_other_1 --out $W/fit_other --identity-space embedding --crop-size 16 \\
  --batch-size 8 --lr 2e-4 --lr-warmup 100 --steps 1765 --save-every 250 --keep-last 2 --workers 0 --cpu \\
  --cache-latents --seed 0
python -m realisid.mini export realisid --work $W/fit_other
# stage 2: the two reference recipes, each continued from the stage-1 file at an equal budget (1,200 steps, seed
# 1, one thread each, side by side): "other" as in stage 1, and the paper's "self" (the target is its own reference;
# scenes writes manifest_self.jsonl beside manifest.jsonl, the same scenes without their references)
for s in 0 1; do python -m realisid.train prepare --manifest $W/scenes/manifest_self.jsonl --out $W/cache_self_$s \\
  --backend mini --size 256 --detect-size 256 --min-face 8 --min-score 0.4 --hint-size 128 --num-shards 2 \\
  --shard-index $s & done; wait
for r in other self; do OMP_NUM_THREADS=1 python -m realisid.train fit \\
  --base models/mini/checkpoints/realisid_mini_base.safetensors --cache $W/cache_${r}_0 $W/cache_${r}_1 \\
  --out $W/fit2_$r --identity-space embedding --crop-size 16 --batch-size 8 --lr 2e-4 --lr-warmup 100 \\
  --steps 1200 --save-every 200 --keep-last 2 --workers 0 --cpu --cache-latents --seed 1 \\
  --init models/mini/realisid/realisid_mini.safetensors & done; wait
# identity use of each recipe on held-out people, with "other" and with "self" references
python -m realisid.mini scenes --out $W/heldout --n 256 --seed 1 --split held_out
for r in other self; do m=manifest.jsonl; [ $r = self ] && m=manifest_self.jsonl
  python -m realisid.train prepare --manifest $W/heldout/$m --out $W/heldout_$r --backend mini --size 256 \\
    --detect-size 256 --min-face 8 --min-score 0.4 --hint-size 128; done
python -m realisid.mini identity-use --model models/mini/realisid/realisid_mini.safetensors --cache $W/heldout_other \\
  --n 128 --out models/mini/identity_use.json --label "stage 1 (1,765 steps, other), other references"
for f in other self; do for r in other self; do python -m realisid.mini identity-use \\
  --model $W/fit2_$f/realisid-final.safetensors --cache $W/heldout_$r --n 128 --out models/mini/identity_use.json \\
  --label "stage 2 $f (+1,200 steps), $r references"; done; done
cp models/mini/realisid/realisid_mini.safetensors $W/stage1.safetensors  # stage 1, before the exports replace it
for r in other self; do python -m realisid.mini export realisid --work $W/fit2_$r --continues $W/stage1.safetensors
  python -m realisid.mini behaviour --out $W/behaviour_recipe_$r.json --n 12 --variants full --people; done
# the recipes tie on identity; "other" copies the reference's expression less: stage 3 continues it, its VAE
# latents pre-computed once (encode-latents), 2 threads
python -m realisid.mini export realisid --work $W/fit2_other --continues $W/stage1.safetensors
python -m realisid.train encode-latents --base models/mini/checkpoints/realisid_mini_base.safetensors \\
  --cache $W/cache_other_0 $W/cache_other_1 --cpu
OMP_NUM_THREADS=2 python -m realisid.train fit --base models/mini/checkpoints/realisid_mini_base.safetensors \\
  --cache $W/cache_other_0 $W/cache_other_1 --out $W/fit3_other --identity-space embedding --crop-size 16 \\
  --batch-size 8 --lr 2e-4 --lr-warmup 100 --steps 2500 --save-every 250 --keep-last 2 --workers 0 --cpu \\
  --cache-latents --seed 2 --init $W/fit2_other/realisid-final.safetensors
python -m realisid.mini export realisid --work $W/fit3_other --continues models/mini/realisid/realisid_mini.safetensors
python -m realisid.mini identity-use --model models/mini/realisid/realisid_mini.safetensors --cache $W/heldout_other \\
  --n 128 --out models/mini/identity_use.json --label "stage 3 other (+2,500 steps), other references"
python -m realisid.mini curves --work $W/fit2_other --stages realisid --suffix _stage2
python -m realisid.mini curves --work $W/fit3_other --stages realisid --suffix _stage3
# sampling settings swept before stage 4 (seed 5, n = 8 per cell, full model): no setting beat the workflows'
# text 4 / identity 3 / delay 0.2 outside the noise, so they stay
for g in "text_scale=4 id_scale=6" "text_scale=4 id_scale=9" "id_delay=0" "text_scale=2"; do
  python -m realisid.mini behaviour --out "$W/sweep/${g// /_}.json" --n 8 --seed 5 --variants full --people --guidance $g; done
# stage 4: 4,500 more steps with a cosine decay to 0.1 x lr (seed 3), from stage 3's last file
cp models/mini/realisid/realisid_mini.safetensors $W/stage3.safetensors
OMP_NUM_THREADS=2 python -m realisid.train fit --base models/mini/checkpoints/realisid_mini_base.safetensors \\
  --cache $W/cache_other_0 $W/cache_other_1 --out $W/fit4_other --identity-space embedding --crop-size 16 \\
  --batch-size 8 --lr 2e-4 --lr-warmup 100 --lr-schedule cosine --lr-min-ratio 0.1 --steps 4500 --save-every 250 \\
  --keep-last 2 --workers 0 --cpu --cache-latents --seed 3 --init $W/fit3_other/realisid-final.safetensors
python -m realisid.mini export realisid --work $W/fit4_other --continues $W/stage3.safetensors
python -m realisid.mini identity-use --model models/mini/realisid/realisid_mini.safetensors --cache $W/heldout_other \\
  --n 128 --out models/mini/identity_use.json --label "stage 4 other (+4,500 steps, cosine), other references"
python -m realisid.mini curves --work $W/fit4_other --stages realisid --suffix _stage4
python -m realisid.mini behaviour --out models/mini/behaviour.json --n 12 --images $W/behaviour_images && python -m realisid.mini card
# issue 14's variants: stage 1's command (1,765 steps, seed 0, the same cache) with one change each, into
# models/mini/variants/ (read by `paper` only); RealisID itself at that budget is stage 1's file
git show 1a806a3:models/mini/realisid/realisid_mini.safetensors > models/mini/variants/realisid_mini_full_1765.safetensors
for v in "instantid_style:--branches global --global-hint face_hint --hint kps5" "kps5:--hint kps5" \\
         "local_only:--branches local" "global_only:--branches global" \\
         "instantid_style_ip:--branches global --global-hint face_hint --hint kps5 --ip-adapter"; do
  OMP_NUM_THREADS=2 python -m realisid.train fit --base models/mini/checkpoints/realisid_mini_base.safetensors \\
    --cache $W/cache_other_0 $W/cache_other_1 --out $W/fitv_${v%%:*} --identity-space embedding --crop-size 16 \\
    --batch-size 8 --lr 2e-4 --lr-warmup 100 --steps 1765 --save-every 250 --keep-last 2 --workers 0 --cpu \\
    --cache-latents --seed 0 ${v#*:}
  python -m realisid.mini export realisid --work $W/fitv_${v%%:*} --variant ${v%%:*}; done
# the VAE, stage 2: the decoder alone from stage 1's file, its encoder frozen (no latent changes, so the base and
# every branch above stay valid); its export also swaps the decoder into the base checkpoint, and every figure read
# from decoded images is measured again (stage 1's file is also in the history: git show
# 7dcc5d4:models/mini/vae/mini_vae.safetensors > $W/vae_stage1.safetensors)
python -m realisid.mini --threads 2 train vae-decoder --work $W/vae2 --init $W/vae_stage1.safetensors --steps 4000
python -m realisid.mini export vae --work $W/vae2 && python -m realisid.mini curves --work $W/vae2 --stages vae-decoder
python -m realisid.mini --threads 2 gates --out models/mini/gates.json --only ceiling vae --n 200 --n-vae 200
python -m realisid.mini --threads 2 gates --out models/mini/gates.json --only base --n 200
python -m realisid.mini behaviour --out models/mini/behaviour.json --n 12 --images $W/behaviour_images && python -m realisid.mini card
python -m realisid.mini paper --n 8 --workers 2  # docs/results-mini.md: the paper's claims per variant (issue 14)
# the base, stage 2: 2,000 more steps on the same 8 shards from the stage-1 checkpoint (with the stage-2 decoder:
# git show f4e0900:models/mini/checkpoints/realisid_mini_base.safetensors > $W/base_stage1.safetensors), warm-up
# then a cosine decay to 0.1 x lr; the branches are not retrained, every figure above is measured again with it
python -m realisid.mini --threads 2 encode --work $W/base2 --shards 8
python -m realisid.mini --threads 2 train base --work $W/base2 --init $W/base_stage1.safetensors --steps 2000 \\
  --lr-schedule cosine
python -m realisid.mini export base --work $W/base2 && python -m realisid.mini curves --work $W/base2 --stages base \\
  --suffix _stage2
python -m realisid.mini --threads 2 gates --out models/mini/gates.json --only base --n 200
python -m realisid.mini behaviour --out models/mini/behaviour.json --n 12 --images $W/behaviour_images && python -m realisid.mini card
python -m realisid.mini paper --n 8 --workers 2
"""


def _boot(comfyui: str | None) -> None:
    from realisid.host import comfy_host

    if not comfyui:
        raise SystemExit("RealisID-Mini needs ComfyUI's model code: pass --comfyui DIR or set COMFYUI_DIR")
    comfy_host.boot(comfyui, cpu=not torch.cuda.is_available())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m realisid.mini", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI folder (default $COMFYUI_DIR)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) one stage")
    train.add_argument("stage", choices=STAGES)
    train.add_argument("--work", required=True, help="folder for the resumable states and curves")
    train.add_argument("--steps", type=int, required=True)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--init", default=None, help="base: a committed base checkpoint to continue from (warm "
                       "start of a new --work folder: both weight copies, a fresh optimizer); vae-decoder: the "
                       "exported stage-1 VAE file whose encoder stays frozen (when --work holds no stage 1)")
    train.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                       help="base only: after warm-up, constant (the stage can be extended by a larger --steps) or "
                       "a cosine decay to 0.1 x lr at --steps (fixed when the stage starts)")
    export = sub.add_parser("export", help="write a trained stage as fp16 safetensors into models/mini/")
    export.add_argument("what", choices=EXPORTS)
    export.add_argument("--work", required=True)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--continues", default=None, help="realisid only: the RealisID-Mini file this run started "
                        "from (fit --init); its training stages are kept before this run's in the record")
    export.add_argument("--variant", default=None, help="realisid only: write models/mini/variants/"
                        "realisid_mini_VARIANT.safetensors (an issue-14 variant) instead of the shipped model")
    scenes = sub.add_parser("scenes", help="the branches' training set: single-person scenes of training identities, "
                            "each with another render of the same person, as a manifest for realisid.train prepare")
    scenes.add_argument("--out", required=True)
    scenes.add_argument("--n", type=int, required=True, help="number of scenes")
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--split", choices=("train", "held_out"), default="train",
                        help="whose identities: training ones, or held-out ones (for identity-use)")
    encode = sub.add_parser("encode", help="VAE latents of training scenes (for the base stage)")
    encode.add_argument("--work", required=True)
    encode.add_argument("--shards", type=int, required=True, help="number of shards of 500 scenes")
    encode.add_argument("--seed", type=int, default=0)
    sub.add_parser("inputs", help="write the bundled Mini example inputs into workflows/inputs/ (seeded)")
    behaviour = sub.add_parser("behaviour", help="measure the trained RealisID-Mini model through the real nodes "
                               "(identity, location, pose and expression, binding; see realisid/mini/behaviour.py)")
    behaviour.add_argument("--out", required=True, help="JSON file for the figures")
    behaviour.add_argument("--n", type=int, default=30, help="cases per cell")
    behaviour.add_argument("--seed", type=int, default=71)
    behaviour.add_argument("--gates", default=None, help="gates.json with the judge's ceiling (default: the shipped one)")
    behaviour.add_argument("--images", default=None, help="also save every generated image into this folder")
    behaviour.add_argument("--variants", nargs="+", default=None, choices=("full", "local_only", "global_only",
                                                                            "text_only"),
                           help="only these variants of the identity cells (default: all four)")
    behaviour.add_argument("--people", nargs="*", type=int, default=None, choices=(2, 3),
                           help="multi-person cells (default: 2 and 3; none with an empty list)")
    behaviour.add_argument("--guidance", nargs="*", default=[], metavar="INPUT=VALUE",
                           help="override RealisID Guider inputs, e.g. id_scale=5 id_delay=0 (sweeps of the "
                           "sampling settings; default: the bundled workflows' settings)")
    paper = sub.add_parser("paper", help="the paper's claims measured per variant with bootstrap intervals: identity "
                           "vs face side, pose and expression, several people, location (see realisid/mini/paper.py)")
    paper.add_argument("--n", type=int, default=8, help="cases per cell")
    paper.add_argument("--seed", type=int, default=72)
    paper.add_argument("--out", default="docs/results-mini", help="folder for rows.json, summary.json and the plots")
    paper.add_argument("--doc", default="docs/results-mini.md", help="the report (tables, plots, reading); '' for none")
    paper.add_argument("--extra", nargs="*", default=[], metavar="NAME=FILE",
                       help="trained variants: a RealisID file the loader lists, run with full strengths")
    paper.add_argument("--sides", nargs="+", default=None, choices=("1/4", "1/5", "1/6", "1/7", "1/8"),
                       help="face sides of the identity cells (default: all five)")
    paper.add_argument("--people", nargs="*", type=int, default=None, choices=(1, 2, 3),
                       help="people cells (default: 1, 2 and 3; none with an empty list)")
    paper.add_argument("--steps", type=int, default=None, help="sampling steps (default: the workflows' 20)")
    paper.add_argument("--workers", type=int, default=1,
                       help="spawned processes sharing the cases, one torch thread each (2 on a 2-core CPU: the "
                            "Mini networks are too small for threads to help); 1 runs in this process")
    paper.add_argument("--no-trained", dest="trained", action="store_false",
                       help="leave out the committed variants of models/mini/variants/ and the baseline's local twins")
    use = sub.add_parser("identity-use", help="face-box loss of held-out faces with their own identity vs another's "
                         "(see realisid/train/identity_use.py)")
    use.add_argument("--model", required=True, help="RealisID-Mini file (.safetensors)")
    use.add_argument("--cache", required=True, nargs="+", help="prepared held-out scenes (scenes --split held_out)")
    use.add_argument("--n", type=int, default=128, help="faces")
    use.add_argument("--out", default=None, help="also write the figures into this JSON file under --label")
    use.add_argument("--label", default="model", help="key of these figures in --out (e.g. the recipe)")
    sub.add_parser("card", help="write models/mini/README.md from the files' metadata and gates.json")
    curves = sub.add_parser("curves", help="training curves of the stages in --work as PNGs for the model card")
    curves.add_argument("--work", required=True)
    curves.add_argument("--out", default=None, help="folder (default models/mini/curves)")
    curves.add_argument("--stages", nargs="*", default=list(STAGES), choices=(*STAGES, "realisid"),
                        help="only these stages (the final ones: a stage still training has no final curve)")
    curves.add_argument("--suffix", default="", help="appended to the file name, e.g. _stage2 for a continued stage")
    gates = sub.add_parser("gates", help="measure the model card's gates with the exported files")
    gates.add_argument("--out", required=True, help="JSON file for the figures")
    gates.add_argument("--n", type=int, default=200, help="faces per cell")
    gates.add_argument("--n-vae", type=int, default=100, help="faces per cell for the VAE gate (each one encoded "
                                                              "and decoded)")
    gates.add_argument("--only", nargs="*", default=None,
                       choices=["ceiling", "vae", "detection", "verification", "base"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    _boot(args.comfyui)
    if args.command == "train":
        if args.init is not None and args.stage not in ("base", "vae-decoder"):
            raise SystemExit(f"--init is for the base and vae-decoder stages only, not {args.stage!r}")
        if args.lr_schedule != "constant" and args.stage != "base":
            raise SystemExit(f"--lr-schedule is for the base stage only, not {args.stage!r}")
        _train(args.stage, args.work, args.steps, args.seed, args.init, args.lr_schedule)
    elif args.command == "export":
        if args.continues is not None and args.what != "realisid":
            raise SystemExit(f"--continues is for the realisid export only, not {args.what!r}")
        _export(args.what, args.work, args.seed, args.continues, args.variant)
    elif args.command == "encode":
        from realisid.mini import base

        base.encode_shards(_load_vae(), str(Path(args.work) / "shards"), args.shards, seed=args.seed)
    elif args.command == "scenes":
        from realisid.mini import dataset

        log.info("manifest: %s", dataset.write_scenes(args.out, args.n, seed=args.seed, split=args.split))
    elif args.command == "curves":
        from realisid.mini import curves, files

        curves.plot_curves(args.work, args.out or str(files.MODELS_DIR / "curves"), tuple(args.stages), args.suffix)
    elif args.command == "card":
        from realisid.mini import card

        card.write_card(CARD_COMMANDS)
    elif args.command == "inputs":
        from realisid.mini import inputs

        inputs.write_inputs()
    elif args.command == "gates":
        _gates(args.out, args.n, args.n_vae, args.only)
    elif args.command == "behaviour":
        _behaviour(args)
    elif args.command == "identity-use":
        _identity_use(args)
    elif args.command == "paper":
        _paper(args)
    return 0


def _paper(args) -> None:
    import shlex
    import tempfile
    import time

    from realisid.host import comfy_host
    from realisid.mini import files, paper

    comfy_host.load_core_extras()
    comfy_host.load_pack()
    sides = {k: v for k, v in paper.SIDES.items() if args.sides is None or k in args.sides}
    people = paper.PEOPLE if args.people is None else tuple(args.people)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:  # references and outputs stay out of the user's ComfyUI folders
        trained, folders = (), ()
        if args.trained:  # the committed variants and the baseline's local twins (users' loaders never list them)
            twins = Path(scratch) / "twins"
            twins.mkdir()
            folders = (str(files.VARIANTS_DIR), str(twins))
        paper.stage_host(scratch, folders)
        if args.trained:
            trained = paper.committed_variants() + paper.twin_variants(twins)
        setup = paper.WorkerSetup(args.comfyui, folders, scratch)
        summary = paper.measure(args.n, args.out, args.seed, args.extra, sides, people, args.steps, trained,
                                args.workers, setup)
    seconds = time.perf_counter() - start
    if args.doc:
        command = "python -m realisid.mini paper " + shlex.join(
            ["--n", str(args.n), "--seed", str(args.seed), "--out", args.out, "--doc", args.doc]
            + (["--sides", *args.sides] if args.sides else []) + (["--people", *map(str, people)] if args.people
                                                                   is not None else [])
            + (["--extra", *args.extra] if args.extra else []) + (["--steps", str(args.steps)] if args.steps else [])
            + ([] if args.trained else ["--no-trained"]) + (["--workers", str(args.workers)] if args.workers > 1
                                                              else []))
        figures = os.path.relpath(args.out, os.path.dirname(os.path.abspath(args.doc)) or ".")
        paper.write_doc(summary, args.doc, figures, command, args.seed, args.n, seconds, args.workers)
        log.info("report written to %s", args.doc)
    log.info("figures in %s (%.1f min)", args.out, seconds / 60)


def _identity_use(args) -> None:
    from realisid.mini import files
    from realisid.train import identity_use

    use = identity_use.measure(args.model, str(files.CHECKPOINTS_DIR / files.BASE_FILE), args.cache, args.n)
    log.info("identity use of %s: face-box loss own %.4f, other %.4f (gap %.1f%%), own lower for %.0f%% of %d "
             "faces", args.model, use.face_mse_own, use.face_mse_other, 100 * use.gap, 100 * use.win_rate, use.n)
    if args.out:
        path = Path(args.out)
        figures = json.loads(path.read_text()) if path.exists() else {}
        figures[args.label] = use.as_dict()
        path.write_text(json.dumps(figures, indent=2) + "\n")


def _guidance_overrides(pairs: list[str]) -> dict:
    """`--guidance id_scale=5 id_delay=0` -> {"id_scale": 5.0, "id_delay": 0.0}."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            out[name] = float(value) if sep else None
        except ValueError:
            out[name] = None
        if out[name] is None:
            raise SystemExit(f"--guidance: {pair!r} is not INPUT=NUMBER (e.g. id_scale=5)")
    return out


def _behaviour(args) -> None:
    import tempfile

    import folder_paths

    from realisid.host import comfy_host
    from realisid.mini import behaviour, files

    comfy_host.load_core_extras()
    comfy_host.load_pack()
    with tempfile.TemporaryDirectory() as scratch:  # references and outputs stay out of the user's ComfyUI folders
        folder_paths.set_input_directory(f"{scratch}/input")
        folder_paths.set_output_directory(f"{scratch}/output")
        options = {k: tuple(v) for k, v in (("variants", args.variants), ("people", args.people)) if v is not None}
        summary = behaviour.measure(args.n, args.gates or files.MODELS_DIR / "gates.json", args.seed, args.images,
                                    guidance=_guidance_overrides(args.guidance), **options)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    log.info("behaviour written to %s (%.2f s per image)", args.out, summary["seconds_per_image"])


def _train(stage: str, work: str, steps: int, seed: int, init: str | None = None,
           lr_schedule: str = "constant") -> None:
    if stage == "vae":
        from realisid.mini import vae

        vae.train(work, steps, seed=seed)
    elif stage == "vae-decoder":
        from realisid.mini import vae

        vae.train_decoder(work, steps, seed=seed, init=init)
    elif stage == "base":
        from realisid.mini import base, family

        family.register()
        base.train(work, str(Path(work) / "shards"), steps, seed=seed, init=init, lr_schedule=lr_schedule)
    else:
        from realisid.mini import train_faces

        trainers = {"detector": train_faces.train_detector, "facenet": train_faces.train_facenet,
                    "judge": train_faces.train_judge}
        trainers[stage](work, steps, seed=seed + (JUDGE_SEED_OFFSET if stage == "judge" else 0))


def _state(work: str, name: str) -> dict:
    path = Path(work) / f"{name}.state.pt"
    if not path.exists():
        raise SystemExit(f"{path} not found: train the '{name}' stage first")
    return torch.load(path, map_location="cpu", weights_only=True)


def _record(state: dict) -> dict:
    """How a stage was trained, from its state (the machine is the one that trained it, not the exporter's)."""
    return {"steps": state["step"], "seconds": round(state["seconds"], 1), "seed": state["seed"],
            "machine": state.get("machine", "not recorded")}


def _export(what: str, work: str, seed: int, continues: str | None = None, variant: str | None = None) -> None:
    from realisid.mini import backend, facenets, files, judge

    if what == "faces":
        det, net = facenets.Detector(), facenets.FaceNet()
        det_state, net_state = _state(work, "detector"), _state(work, "facenet")
        det.load_state_dict(det_state["model"])
        net.load_state_dict(net_state["model"])
        backend.save_face_models(files.FACES_DIR / files.FACES_FILE, det.eval(), net.eval(),
                                 training={"detector": _record(det_state), "facenet": _record(net_state)})
    elif what == "judge":
        net, state = facenets.Judge(), _state(work, "judge")
        net.load_state_dict(state["model"])
        judge.save_judge(files.FACES_DIR / files.JUDGE_FILE, net.eval(), training={"judge": _record(state)})
    elif what == "vae":
        _export_vae(work, seed)
    elif what == "base":
        _export_base(work, seed, files.CHECKPOINTS_DIR / files.BASE_FILE)
    else:
        target = files.REALISID_DIR / files.REALISID_FILE if variant is None else \
            files.VARIANTS_DIR / files.variant_file(variant)
        _export_realisid(work, target, continues)
    log.info("exported %s", what)


def _export_realisid(work: str, path: Path, continues: str | None = None) -> None:
    """The newest model file of a `python -m realisid.train fit --out WORK` run, in fp16, with the training record
    the trainer wrote into it (the model card's row). A run warm-started from an exported file (`continues`) keeps
    that file's stages first and adds its own as the next stage."""
    import re

    import safetensors
    import safetensors.torch

    from realisid.mini import files
    from realisid.train.outputs import TRAINING_KEY

    steps = {int(m.group(1)): p for p in Path(work).glob("realisid-step*.safetensors")
             if (m := re.fullmatch(r"realisid-step(\d+)\.safetensors", p.name))}
    final = Path(work) / "realisid-final.safetensors"  # a finished run's last step (no step file when --steps is
    if final.is_file():  # not a multiple of --save-every)
        steps[_recorded_steps(final)] = final
    if not steps:
        raise SystemExit(f"no realisid-step*.safetensors in {work}: run `python -m realisid.train fit --out {work}`")
    step, source = max(steps.items())
    with safetensors.safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if TRAINING_KEY not in metadata:
        raise SystemExit(f"{source} has no '{TRAINING_KEY}' record (steps, time, machine): it was written by an older "
                         f"trainer; continue it with `python -m realisid.train fit --init {source}` to get one")
    record = json.loads(metadata[TRAINING_KEY])
    stages = {} if continues is None else dict(files.read_info(continues, "realisid").get("training", {}))
    stage = "realisid" if not stages else f"realisid stage {len(stages) + 1}"
    tensors = {k: (v.half() if v.is_floating_point() else v)
               for k, v in safetensors.torch.load_file(str(source)).items()}
    metadata[files.METADATA_KEY] = json.dumps({"kind": "realisid", "training": {**stages, stage: record}})
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    log.info("%s: step %d of %s, %.1f MB", path, step, work, path.stat().st_size / 1e6)


def _recorded_steps(path: Path) -> int:
    import safetensors

    from realisid.train.outputs import TRAINING_KEY

    with safetensors.safe_open(str(path), framework="pt") as f:
        record = (f.metadata() or {}).get(TRAINING_KEY)
    return int(json.loads(record)["steps"]) if record else -1


def _export_base(work: str, seed: int, path: Path) -> None:
    """The base's EMA UNet and text encoders with the shipped Mini VAE (whose encoder made the base's latents), as
    one SDXL-layout checkpoint that ComfyUI's stock loader reads."""
    from realisid.mini import base, family, files

    family.register()
    base_model, clip = base.build(seed)
    nets, state = base.BaseNets(base_model, clip), _state(work, "base")
    nets.load_state_dict(state["model"])
    vae_model = _load_vae()
    records = dict(files.read_info(files.VAE_DIR / files.VAE_FILE, "vae").get("training", {}))
    record = _record(state)
    schedule = Path(work) / base.SCHEDULE_RECORD
    if schedule.exists():
        record["lr_schedule"] = json.loads(schedule.read_text())["lr_schedule"]
    init = Path(work) / base.INIT_RECORD
    if init.exists():  # a warm-started stage: the base stages it continues come first, then this one
        previous = json.loads(init.read_text())
        records.update({k: v for k, v in previous.items() if k.startswith("base")})
        stage = f"base stage {1 + sum(k.startswith('base') for k in records)}"
        records[stage] = {**record, "from": previous["from"]}
    else:
        records["base"] = record
    base.save_checkpoint(str(path), base_model, nets.ema_unet.state_dict(), nets.ema_clip.state_dict(),
                         vae_model.state_dict(), {"kind": "base", "training": records})


def _export_vae(work: str, seed: int) -> None:
    """The VAE file; after a decoder stage, also the base checkpoint's VAE (the same encoder, checked, so the base
    and the branches trained on its latents stay valid)."""
    from realisid.mini import base, files, vae

    model, records = _vae_for_export(work, seed)
    stage_one = vae.stage_one_info(work)
    if stage_one is None:
        mean, std = vae.calibrate(model)
    else:  # the stage-1 file's normalisation, which the shipped latents were made with
        mean, std = stage_one["raw_latent_mean"], stage_one["raw_latent_std"]
    checkpoint = files.CHECKPOINTS_DIR / files.BASE_FILE
    if vae.decoder_stage_started(work) and checkpoint.exists():  # (a base exported later reads the VAE file)
        base.replace_checkpoint_vae(checkpoint, model.state_dict(), records)
        log.info("the base checkpoint %s now holds the new decoder (its UNet, text encoders and encoder kept)",
                 checkpoint)
    files.save_networks(files.VAE_DIR / files.VAE_FILE, {"vae": model}, "vae", training=records,
                        raw_latent_mean=mean, raw_latent_std=std)


def _vae_for_export(work: str, seed: int):
    """Stage 1's EMA TAESD, with stage 2's EMA decoder once that stage has started (the encoder is stage 1's in
    both: stage 2 never changes it)."""
    from realisid.mini import vae

    model = vae.stage_one_model(work, seed)
    stage_one = vae.stage_one_info(work)
    records = dict(stage_one["training"]) if stage_one is not None else {"vae": _record(_state(work, "vae"))}
    if vae.decoder_stage_started(work):
        nets, state = vae.VaeNets(vae.build_taesd(seed)), _state(work, vae.DECODER_STAGE)
        nets.load_state_dict(state["model"])
        model.taesd_decoder.load_state_dict(nets.ema.taesd_decoder.state_dict())
        records[vae.DECODER_STAGE] = _record(state)
    return model, records


def _load_vae():
    from realisid.mini import files, vae

    model = vae.build_taesd(0)
    files.load_networks(files.VAE_DIR / files.VAE_FILE, "vae", {"vae": model})
    return model


def _gates(out: str, n: int, n_vae: int, only: list[str] | None) -> None:
    from realisid.mini import backend, gates, judge

    wanted = set(only or ["ceiling", "vae", "detection", "verification", "base"])
    path = Path(out)
    results = json.loads(path.read_text()) if path.exists() else {}
    if wanted & {"ceiling", "vae"}:
        the_judge = judge.MiniJudge()
        if "ceiling" in wanted:
            results["ceiling"] = {k: v.as_dict() for k, v in gates.ceiling(the_judge, n).items()}
            # the same scenes as the VAE gate, so the two compare face by face
            results["ceiling_vae_sample"] = {k: v.as_dict() for k, v in gates.ceiling(the_judge, n_vae).items()}
        if "vae" in wanted:
            results["vae"] = {k: v.as_dict() for k, v in gates.vae_gate(the_judge, _load_vae(), n_vae).items()}
    if wanted & {"detection", "verification"}:
        analyzer = backend.MiniFaceAnalyzer()
        if "detection" in wanted:
            results["detection"] = gates.detection_gate(analyzer, max(20, n // 2))
        if "verification" in wanted:
            results["verification"] = gates.verification_gate(analyzer, max(50, n // 2))
    if "base" in wanted:
        from realisid.mini import family, files

        family.register()
        results["base"] = gates.base_gate(backend.MiniFaceAnalyzer(), judge.MiniJudge(),
                                          str(files.CHECKPOINTS_DIR / files.BASE_FILE), n,
                                          samples_png=str(files.MODELS_DIR / "curves" / "base_samples.png"))
    # each figure keeps the sample size it was measured with (a later --only run of other gates leaves it)
    if "ceiling" in wanted:
        results["n"] = n
    if wanted & {"ceiling", "vae"}:
        results["n_vae"] = n_vae
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    log.info("gates written to %s", path)
