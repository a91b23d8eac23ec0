"""Run ComfyUI in-process: boot the host, load this pack like ComfyUI does, execute API-format prompts.

Shared by the headless runner (`python -m realisid run`) and the tests, so both exercise the same path:
`execution.validate_prompt` then `execution.PromptExecutor`, with ComfyUI's real nodes and loaders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

PACK_DIR = pathlib.Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


class PromptError(RuntimeError):
    """A prompt failed validation or execution; the message names the node and the reason."""


def is_comfyui(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, "comfy", "model_management.py"))


def find_comfyui(explicit: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None) -> pathlib.Path:
    """The ComfyUI folder to run in: `explicit` (--comfyui), else $COMFYUI_DIR, else the ComfyUI whose
    custom_nodes/ holds this pack (seen from the pack's own path or from the working directory, so a symlinked
    install counts), else the one scripts/setup.sh recorded. SystemExit with what to do when there is none."""
    if explicit is not None:
        if not is_comfyui(explicit):
            raise SystemExit(f"{explicit} is not a ComfyUI folder (no comfy/model_management.py)")
        return pathlib.Path(explicit).absolute()
    if os.environ.get("COMFYUI_DIR"):
        return find_comfyui(os.environ["COMFYUI_DIR"])
    starts = [pathlib.Path(os.path.abspath(__file__)).parents[2], PACK_DIR, pathlib.Path(cwd or os.getcwd()).absolute()]
    for start in starts:
        for folder in (start, *start.parents):
            if folder.name == "custom_nodes" and is_comfyui(folder.parent):
                return folder.parent
    home = pathlib.Path(os.environ.get("REALISID_HOME", pathlib.Path.home() / ".cache" / "comfyui-realisid"))
    recorded = home / "comfyui-dir"
    if recorded.is_file() and is_comfyui(recorded.read_text().strip()):
        return pathlib.Path(recorded.read_text().strip())
    raise SystemExit("ComfyUI not found: run this from the pack inside ComfyUI/custom_nodes, pass --comfyui DIR, "
                     "set COMFYUI_DIR, or run scripts/setup.sh (it builds a ComfyUI host for the tests and the runner)")


AUDIO_EXTRAS = ("nodes_audio.py", "nodes_audio_encoder.py")


class _TorchaudioFilter(logging.Filter):
    """Drops ComfyUI's log lines about its audio nodes lacking torchaudio (two tracebacks, a 'pip install'
    banner, three model warnings); RealisID never uses them. Counts what it dropped."""

    BANNER = ("WARNING: some comfy_extras/ nodes did not import correctly", "This issue might be caused by new",
              "Please do a: pip install -r requirements.txt")

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to the handler
            return True
        audio = "torchaudio" in text or any(f"IMPORT FAILED: {name}" == text.strip() for name in AUDIO_EXTRAS)
        banner = text.strip().startswith(self.BANNER) or (text.strip() == "" and record.levelno == logging.WARNING)
        if audio or banner:
            self.dropped += 1
            return False
        return True


@contextlib.contextmanager
def quiet_torchaudio() -> Iterator[None]:
    """Within it, ComfyUI's missing-torchaudio noise becomes one info line. Other import failures still show."""
    root = logging.getLogger()
    flt = _TorchaudioFilter()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
        if flt.dropped:
            log.info("ComfyUI's audio nodes are unavailable (no torchaudio); RealisID does not use them")


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


def load_all_extras(custom_nodes: bool = False) -> None:
    """All of comfy_extras, as ComfyUI's start-up loads them (user workflows may use any core node), and with
    `custom_nodes` every pack in ComfyUI's custom_nodes folders (this one too, when it is installed there)."""
    with quiet_torchaudio():
        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=custom_nodes, init_api_nodes=False))


def load_extra_model_paths(comfyui_dir: str | os.PathLike, extra: list | tuple = ()) -> list[str]:
    """What main.py does: ComfyUI's own extra_model_paths.yaml when there is one, then each --extra-model-paths
    file. Returns the files read."""
    import utils.extra_config

    files = []
    default = os.path.join(comfyui_dir, "extra_model_paths.yaml")
    for path in ([default] if os.path.isfile(default) else []) + [str(p) for p in extra]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"extra model paths file {path} does not exist")
        utils.extra_config.load_extra_path_config(path)
        files.append(path)
    return files


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
