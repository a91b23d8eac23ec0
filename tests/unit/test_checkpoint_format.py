"""The RealisID file format read without ComfyUI (realisid.checkpoint_format): every hostile header is refused
by read_config with a CheckpointError that names the file and the field, and check_tensors compares keys,
shapes and dtypes with the shapes a config gives."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from realisid import checkpoint_format as fmt
from realisid.checkpoint_format import CheckpointError
from tests.helpers.checkpoint_cases import CONFIG_CASES, FILE_CASES, FOREIGN_CASES, METADATA_CASES, VALID_CONFIG

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def _raises(fn, *fragments) -> str:
    with pytest.raises(Exception) as caught:
        fn()
    assert type(caught.value) is CheckpointError, f"{type(caught.value).__name__}: {caught.value}"
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in: {caught.value}"
    return str(caught.value)


def _header(folder: pathlib.Path, case: str, metadata: str | None, tensors=None) -> str:
    path = folder / f"{case}.safetensors"
    safetensors.torch.save_file(tensors or {"local.w": torch.zeros(2)}, str(path),
                                metadata=None if metadata is None else {fmt.METADATA_KEY: metadata})
    return str(path)


def test_the_format_module_needs_no_comfyui():
    """In a fresh interpreter (the suite's other tests have imported comfy into this one)."""
    probe = ("import sys, realisid.checkpoint_format; "
             "sys.exit(any(n == 'comfy' or n.startswith('comfy.') for n in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr or "realisid.checkpoint_format imported comfy"


def test_a_valid_header_reads_back_its_config(tmp_path):
    path = _header(tmp_path, "valid", json.dumps(VALID_CONFIG))
    assert fmt.read_config(path) == VALID_CONFIG


@pytest.mark.parametrize("case,mutate,fragment", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_refused_naming_file_and_field(tmp_path, case, mutate, fragment):
    bad = json.loads(json.dumps(VALID_CONFIG))
    mutate(bad)
    path = _header(tmp_path, case, json.dumps(bad))
    _raises(lambda: fmt.read_config(path), f"{case}.safetensors", fragment, "Expected")


@pytest.mark.parametrize("case,metadata,fragment", METADATA_CASES, ids=[c[0] for c in METADATA_CASES])
def test_metadata_that_is_not_a_json_object_is_refused(tmp_path, case, metadata, fragment):
    path = _header(tmp_path, case, metadata)
    _raises(lambda: fmt.read_config(path), f"{case}.safetensors", fragment)


@pytest.mark.parametrize("case,content,fragment", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_unreadable_files_are_refused(tmp_path, case, content, fragment):
    valid = pathlib.Path(_header(tmp_path, "valid", json.dumps(VALID_CONFIG))).read_bytes()
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(content(valid))
    _raises(lambda: fmt.read_config(str(path)), f"{case}.safetensors", fragment)
    assert not pathlib.Path("/tmp/realisid_unpickled_checkpoint").exists()


@pytest.mark.parametrize("case,tensors,fragment", FOREIGN_CASES, ids=[c[0] for c in FOREIGN_CASES])
def test_other_model_files_are_recognised(tmp_path, case, tensors, fragment):
    path = _header(tmp_path, case, None, tensors)
    _raises(lambda: fmt.read_config(path), f"{case}.safetensors", "not a RealisID checkpoint", fragment)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="RealisID checkpoint not found"):
        fmt.read_config(str(tmp_path / "absent.safetensors"))


EXPECTED = {"local.a": (2, 3), "projector.b": (4,)}
TENSOR_CASES = [
    ("ok", {"local.a": torch.zeros(2, 3), "projector.b": torch.zeros(4)}, None),
    ("ok-fp16", {"local.a": torch.zeros(2, 3).half(), "projector.b": torch.zeros(4).half()}, None),
    ("shape", {"local.a": torch.zeros(2, 4), "projector.b": torch.zeros(4)}, "local.a has shape [2, 4]"),
    ("missing", {"local.a": torch.zeros(2, 3)}, "1 missing (e.g. ['projector.b'])"),
    ("extra", {**{"local.a": torch.zeros(2, 3), "projector.b": torch.zeros(4)}, "x": torch.zeros(1)}, "1 unexpected"),
    ("int", {"local.a": torch.zeros(2, 3, dtype=torch.int32), "projector.b": torch.zeros(4)}, "local.a is I32"),
    ("mixed", {"local.a": torch.zeros(2, 3).half(), "projector.b": torch.zeros(4)}, "mix dtypes ['F16', 'F32']"),
]


@pytest.mark.parametrize("case,tensors,fragment", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_tensors_are_checked_against_the_configs_shapes(tmp_path, case, tensors, fragment):
    path = _header(tmp_path, case, json.dumps(VALID_CONFIG), tensors)
    _, entries = fmt.read_header(path)
    if fragment is None:
        assert fmt.check_tensors(path, EXPECTED, entries) == next(iter(tensors.values())).dtype
    else:
        _raises(lambda: fmt.check_tensors(path, EXPECTED, entries), f"{case}.safetensors", fragment)
