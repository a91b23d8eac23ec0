"""CLI: python -m realisid.evaluate --plan plan.json --workflow W.json --out DIR [options]."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("realisid.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m realisid.evaluate", description=__doc__)
    p.add_argument("--plan", required=True, help="plan JSON (references, prompts, sizes, persons, variants, ...)")
    p.add_argument("--workflow", required=True, help="API-format ComfyUI workflow JSON (the template)")
    p.add_argument("--mapping", help="JSON {'node_id.input': 'case value'}; default: the plan's 'mapping' key")
    p.add_argument("--out", required=True, help="output folder (results.csv, summary.md, identity_vs_size.png)")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI folder (default $COMFYUI_DIR)")
    p.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU")
    p.add_argument("--analyzer", choices=("embedded", "insightface"), default="embedded",
                   help="face analyzer for detection + identity (embedded: dlib-resnet-128, no files needed)")
    p.add_argument("--insightface-root", help="folder holding models/<pack>/*.onnx (for --analyzer insightface)")
    p.add_argument("--insightface-pack", default="antelopev2")
    p.add_argument("--clip-vision", help="CLIP-vision file for CLIP-I (and CLIP-T with --clip-checkpoint)")
    p.add_argument("--clip-checkpoint", help="checkpoint whose CLIP text encoder is used for CLIP-T")
    return p


def make_analyzer(args):
    if args.analyzer == "insightface":
        if not args.insightface_root:
            raise SystemExit("--analyzer insightface needs --insightface-root (the folder holding models/<pack>/)")
        from ..faces.insightface_backend import InsightFaceAnalyzer

        return InsightFaceAnalyzer(args.insightface_root, pack=args.insightface_pack)
    from ..faces.embedded import EmbeddedAnalyzer

    return EmbeddedAnalyzer()


def make_clip(args):
    if not args.clip_vision:
        if args.clip_checkpoint:
            raise SystemExit("--clip-checkpoint needs --clip-vision (CLIP-T compares text with CLIP-vision embeds)")
        return None
    import comfy.clip_vision
    import comfy.sd

    from .metrics import ClipScorer

    vision = comfy.clip_vision.load(args.clip_vision)
    if vision is None:
        raise SystemExit(f"{args.clip_vision} is not a CLIP-vision model ComfyUI recognises")
    clip = None
    name = Path(args.clip_vision).name
    if args.clip_checkpoint:
        clip = comfy.sd.load_checkpoint_guess_config(args.clip_checkpoint, output_vae=False, output_clipvision=False)[1]
        name += " + " + Path(args.clip_checkpoint).name
    return ClipScorer(vision, clip, name=name)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if not args.comfyui:
        raise SystemExit("set --comfyui or $COMFYUI_DIR to the ComfyUI folder")
    from ..host import comfy_host

    comfy_host.boot(args.comfyui, cpu=args.cpu)
    import folder_paths

    from .harness import EvalPlan, WorkflowGenerator, run_evaluation

    out = Path(args.out).resolve()
    folder_paths.set_output_directory(str(out / "comfy_output"))
    comfy_host.load_core_extras()
    comfy_host.load_pack()
    plan_data = json.loads(Path(args.plan).read_text())
    mapping = json.loads(Path(args.mapping).read_text()) if args.mapping else plan_data.get("mapping")
    if not mapping:
        raise SystemExit("no placeholder mapping: pass --mapping or put 'mapping' in the plan")
    plan = EvalPlan.from_dict(plan_data, base_dir=Path(args.plan).parent)
    generator = WorkflowGenerator(json.loads(Path(args.workflow).read_text()), mapping)
    rows = run_evaluation(plan, generator, make_analyzer(args), out, clip=make_clip(args))
    log.info("%d face rows written to %s", len(rows), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
