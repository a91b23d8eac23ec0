"""Run ComfyUI in-process: boot the host, load this pack like ComfyUI does, execute API-format prompts.

Shared by the headless runner (`python -m realisid run`) and the tests, so both exercise the same path:
`execution.validate_prompt` then `execution.PromptExecutor`, with ComfyUI's real nodes and loaders.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

PACK_DIR = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


class PromptError(RuntimeError):
    """A prompt failed validation or execution; the message names the node and the reason."""


def boot(comfyui_dir: str | os.PathLike, cpu: bool = False) -> None:
    """Make ComfyUI importable. Must run before anything imports comfy.model_management."""
    root = str(pathlib.Path(comfyui_dir).resolve())
    if not os.path.isfile(os.path.join(root, "comfy", "model_management.py")):
        raise FileNotFoundError(f"{root} is not a ComfyUI folder (no comfy/model_management.py)")
    if root not in sys.path:
        sys.path.insert(0, root)
    if str(PACK_DIR) not in sys.path:
        sys.path.append(str(PACK_DIR))
    import comfy.cli_args

    if cpu:
        comfy.cli_args.args.cpu = True
    # Claim `utils` for ComfyUI's utils/ package before `import nodes` puts comfy/ first on sys.path.
    import utils.extra_config  # noqa: F401


def load_pack(pack_dir: str | os.PathLike = PACK_DIR) -> list[str]:
    """Load this pack through nodes.load_custom_node, as ComfyUI's start-up does; returns the new node ids."""
    import nodes

    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = asyncio.run(nodes.load_custom_node(str(pack_dir), ignore=before))
    if not ok:
        raise PromptError(f"ComfyUI could not load the node pack in {pack_dir}; see the log above")
    return sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)


def load_core_extras(names: tuple[str, ...] = ("nodes_custom_sampler.py", "nodes_mask.py")) -> None:
    """Load the comfy_extras modules our workflows use (all of comfy_extras takes ~5 s; these take <1 s)."""
    import nodes

    extras = pathlib.Path(nodes.__file__).parent / "comfy_extras"
    for name in names:
        if name not in _LOADED_EXTRAS:
            asyncio.run(nodes.load_custom_node(str(extras / name), module_parent="comfy_extras"))
            _LOADED_EXTRAS.add(name)


_LOADED_EXTRAS: set[str] = set()


def load_all_extras() -> None:
    """All of comfy_extras, as ComfyUI's start-up loads them (user workflows may use any core node)."""
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))


@dataclass
class _EventSink:
    """The part of PromptServer that PromptExecutor talks to."""

    on_event: Callable[[str, dict], None] | None = None
    client_id: str | None = "realisid"
    last_node_id: str | None = None
    last_prompt_id: str | None = None
    events: list = field(default_factory=list)

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))
        if self.on_event is not None:
            self.on_event(event, data)

    def queue_updated(self):
        pass


@dataclass
class PromptResult:
    prompt_id: str
    outputs: dict  # node id -> UI output dict (e.g. {"images": [{"filename": ..., "subfolder": ..., "type": ...}]})
    events: list


def execute(prompt: dict, on_event: Callable[[str, dict], None] | None = None) -> PromptResult:
    """Validate and execute one API-format prompt in this process."""
    import execution

    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise PromptError(describe_validation_error(error, node_errors))
    sink = _EventSink(on_event=on_event)
    executor = execution.PromptExecutor(sink, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
    asyncio.run(executor.execute_async(prompt, prompt_id, {"client_id": sink.client_id}, outputs))
    if not executor.success:
        raise PromptError(describe_execution_error(executor.status_messages))
    return PromptResult(prompt_id, executor.history_result.get("outputs", {}), sink.events)


def describe_validation_error(error: dict, node_errors: dict) -> str:
    lines = [f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".strip()]
    for node_id, info in (node_errors or {}).items():
        for err in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {err.get('message')} {err.get('details', '')}")
    return "\n".join(lines)


def describe_execution_error(messages: list) -> str:
    for event, data in messages:
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {data.get('exception_message')}")
    return "execution failed (no error message recorded)"
