"""Headless runner: `python -m realisid run <workflow> --set <node>.<input>=<value> ...`.

Executes a workflow (UI or API format) in-process in the ComfyUI host, shows progress, writes the images, and
when model files are missing, lists exactly which file to put in which folder instead of failing midway.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil

from tqdm import tqdm

from realisid import comfy_host, workflow_format

log = logging.getLogger("realisid.run")

# (node type, input) -> the ComfyUI model folder the file belongs in
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("RealisIDModelLoader", "model_name"): "realisid",
    ("RealisIDInstantIDLoader", "control_net_name"): "controlnet",
    ("RealisIDInstantIDLoader", "ip_adapter_name"): "instantid",
}


class MissingModelsError(RuntimeError):
    """Model files a workflow needs are not installed; the message lists file -> folder."""


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
            raise SystemExit(f"--set: no node with id or title {node!r} (ids: {', '.join(prompt)})")
        for nid in matches:
            prompt[nid]["inputs"][name] = _stage_input_file(prompt[nid]["class_type"], name, value)
    return prompt


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
    """Copy the bundled example images a workflow names into ComfyUI's input folder when they are not there."""
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
    import folder_paths

    missing = []
    for node in prompt.values():
        for name, value in node["inputs"].items():
            folder = MODEL_INPUTS.get((node["class_type"], name))
            if folder and isinstance(value, str) and folder_paths.get_full_path(folder, value) is None:
                missing.append((value, folder))
    return missing


def describe_missing(missing: list[tuple[str, str]]) -> str:
    import folder_paths

    lines = ["This workflow needs model files that are not installed:"]
    for file, folder in missing:
        lines.append(f"  {file}  ->  {folder_paths.get_folder_paths(folder)[0]}{os.sep}")
    lines.append("See the README section 'Which path needs what' for where each file comes from.")
    return "\n".join(lines)


def load_workflow(path: pathlib.Path) -> dict:
    data = json.loads(path.read_text())
    if "nodes" in data and "links" in data:
        return workflow_format.ui_to_api(data, workflow_format.object_info())
    return data


class _Progress:
    """A tqdm bar per sampling node, fed by ComfyUI's progress events."""

    def __init__(self):
        self.bar = None

    def __call__(self, event: str, data: dict) -> None:
        if event == "executing" and data.get("node"):
            log.info("running node %s", data["node"])
        elif event == "progress":
            if self.bar is None or self.bar.total != data["max"] or data["value"] < self.bar.n:
                self.close()
                self.bar = tqdm(total=data["max"], desc=f"node {data.get('node')}", leave=False)
            self.bar.update(data["value"] - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(workflow: pathlib.Path, overrides: list[str], output: pathlib.Path) -> list[pathlib.Path]:
    import folder_paths

    output.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(output.resolve()))
    prompt = apply_overrides(load_workflow(workflow), parse_set(overrides))
    for name in stage_example_inputs(prompt):
        log.info("copied the example input %s into ComfyUI's input folder", name)
    missing = missing_models(prompt)
    if missing:
        raise MissingModelsError(describe_missing(missing))
    progress = _Progress()
    _hook_progress(progress)
    try:
        result = comfy_host.execute(prompt, on_event=progress)
    finally:
        progress.close()
    written = [output / img.get("subfolder", "") / img["filename"]
               for ui in result.outputs.values() for img in ui.get("images", []) if img.get("type") == "output"]
    for path in written:
        log.info("wrote %s", path)
    return written


def _hook_progress(progress: _Progress) -> None:
    import comfy.utils

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
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("output"), help="where images go")
    parser.add_argument("--comfyui", type=pathlib.Path, default=os.environ.get("COMFYUI_DIR"),
                        help="ComfyUI folder (default: $COMFYUI_DIR)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--extra-model-paths", type=pathlib.Path, help="an extra_model_paths.yaml to load")


def main(args: argparse.Namespace) -> int:
    if args.comfyui is None:
        raise SystemExit("where is ComfyUI? pass --comfyui DIR or set COMFYUI_DIR")
    cpu = args.cpu or not accelerator_available()
    if cpu and not args.cpu:
        log.warning("no GPU is visible to torch: running on the CPU (slow at real model sizes)")
    comfy_host.boot(args.comfyui, cpu=cpu)
    if args.extra_model_paths:
        import utils.extra_config

        utils.extra_config.load_extra_path_config(str(args.extra_model_paths))
    import nodes  # noqa: F401  (after boot: ComfyUI's nodes module)

    comfy_host.load_all_extras()
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
