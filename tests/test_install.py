"""Installing the pack the way ComfyUI Manager does, into a fresh ComfyUI tree, and what a user then meets:
the model folders and example inputs in place, a bundled workflow queued over HTTP, the runner run from inside
custom_nodes with no flags, a file found only through ComfyUI's extra_model_paths.yaml. Also install.py's
onnxruntime rule."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import server as server_helpers
from tests.helpers.host import REPO, comfyui_dir
from tests.test_workflows import shrink_for_cpu

WORKFLOW = "realisid_single_person"


def load_install_py():
    spec = importlib.util.spec_from_file_location("realisid_install", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("env, installed, cuda, version, expected", [
    (None, None, False, "", "onnxruntime>=1.17"),  # CPU-only box: never the 250 MB GPU build
    (None, None, True, "12.8", "onnxruntime>=1.17"),  # PyPI's onnxruntime-gpu cannot use CUDA 12 libraries
    (None, None, True, "13.0", "onnxruntime-gpu>=1.17"),
    (None, "onnxruntime-gpu", False, "", None),  # whatever the user installed stays
    (None, "onnxruntime", True, "13.0", None),
    ("cpu", None, True, "13.0", "onnxruntime>=1.17"),
    ("gpu", None, False, "", "onnxruntime-gpu>=1.17"),
    ("keep", None, True, "13.0", None),
])
def test_onnxruntime_build_only_where_it_can_run(env, installed, cuda, version, expected):
    requirement, why = load_install_py().onnxruntime_choice(env, installed, cuda, version)
    assert requirement == expected, why
    assert why


def test_requirements_and_install_bound_insightface_and_never_name_both_onnxruntime_builds():
    import tomllib

    install = load_install_py()
    requirements = (REPO / "requirements.txt").read_text()
    assert "onnxruntime" not in [line.split(";")[0].split(">")[0].split("=")[0].strip()
                                 for line in requirements.splitlines() if line and not line.startswith("#")]
    assert "<" in install.INSIGHTFACE
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert install.INSIGHTFACE in extras["insightface"]
    assert install.INSIGHTFACE in (REPO / "scripts" / "setup.sh").read_text().replace('"', "")


def overlay_working_tree(clone):
    """The clone holds the last commit; lay this checkout's files over it (tracked and new, never models/), so
    the test checks what would be committed."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if name.startswith("models/") or not source.is_file():
            continue
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    for name in subprocess.run(["git", "ls-files", "-d"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.splitlines():
        (clone / name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, models_dir):
    """A fresh ComfyUI tree with the pack cloned into custom_nodes, its requirements and install.py run, tiny models
    under the workflow's file names, the RealisID checkpoint only in a folder named by ComfyUI's
    extra_model_paths.yaml, and a user's own photo that shares a name with an example input."""
    root = tmp_path_factory.mktemp("manager")
    comfy = root / "ComfyUI"
    ours = {"realisid", "instantid", "insightface"}
    shutil.copytree(comfyui_dir(), comfy, symlinks=True, ignore=lambda folder, names: [
        n for n in names if n in ("__pycache__", "user", "temp", "output") or n.endswith(".db")
        or (os.path.basename(folder) == "models" and n in ours)
        or (os.path.basename(folder) == "input" and n.startswith(("astronaut", "mini_")))])
    clone = comfy / "custom_nodes" / "ComfyUI-RealisID"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    overlay_working_tree(clone)
    # what Manager runs, with ComfyUI's Python (offline: everything is already installed, so pip needs no index)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "-r", "requirements.txt"], cwd=clone,
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    install = subprocess.run([sys.executable, "install.py"], cwd=clone, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert "onnxruntime: keeping the installed onnxruntime" in install.stderr, install.stderr[-2000:]
    # test-only: teaches ComfyUI the tiny checkpoints' family (never part of a user's install)
    (comfy / "custom_nodes" / "realisid_tiny_models").symlink_to(REPO / "tests" / "helpers" / "tiny_pack")
    for folder, name in (("checkpoints", "sd_xl_base_1.0.safetensors"),
                         ("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")):
        (comfy / "models" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(models_dir / folder / name, comfy / "models" / folder / name)
    elsewhere = root / "my_models"
    (elsewhere / "realisid").mkdir(parents=True)
    shutil.copy(models_dir / "realisid" / "realisid_sdxl.safetensors", elsewhere / "realisid")
    (comfy / "extra_model_paths.yaml").write_text(f"mine:\n    base_path: {elsewhere}\n    realisid: realisid\n")
    (comfy / "input").mkdir(exist_ok=True)
    (comfy / "input" / "astronaut_driver.jpg").write_bytes(b"the user's own photo")
    workflow = root / f"{WORKFLOW}.json"
    workflow.write_text(json.dumps(shrink_for_cpu(json.loads((REPO / "workflows" / "api" / f"{WORKFLOW}.json")
                                                             .read_text()))))
    return {"comfy": comfy, "clone": clone, "workflow": workflow}


class FreshServer(server_helpers.ComfyServer):
    """main.py run in the ComfyUI folder itself, as a user starts it (no --base-directory, no extra flags)."""

    def __init__(self, comfy):
        self.base_dir = comfy
        self.port = server_helpers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = comfy / "server.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--database-url", "sqlite:///:memory:", "--disable-metadata"],
            cwd=comfy, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.server
@pytest.mark.slow
def test_installed_like_manager_the_server_runs_a_bundled_workflow(fresh):
    comfy = fresh["comfy"]
    server = FreshServer(comfy)
    try:
        server.wait_ready(timeout=600)
        for sub in ("realisid", "instantid", "insightface/models"):
            assert (comfy / "models" / sub).is_dir(), sub  # created and registered at load
        assert (comfy / "input" / "astronaut.jpg").read_bytes() == \
            (REPO / "workflows" / "inputs" / "astronaut.jpg").read_bytes()
        assert (comfy / "input" / "astronaut_driver.jpg").read_bytes() == b"the user's own photo"
        listed = {m["name"] for m in server.get("/experiment/models/realisid")}
        assert "realisid_sdxl.safetensors" in listed  # found through extra_model_paths.yaml only
        entry = server.run_prompt(json.loads(fresh["workflow"].read_text()), timeout=900)
        (image,) = [img for out in entry["outputs"].values() for img in out.get("images", [])
                    if img["type"] == "output"]
        assert (comfy / "output" / image["subfolder"] / image["filename"]).is_file()
    finally:
        server.stop()


@pytest.mark.slow
def test_the_runner_inside_custom_nodes_needs_no_flags(fresh):
    """From the pack's folder, no --comfyui and no COMFYUI_DIR: it finds ComfyUI, reads its extra_model_paths.yaml
    (the RealisID checkpoint is only there), and writes to ComfyUI's output folder."""
    comfy, clone = fresh["comfy"], fresh["clone"]
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "PYTHONPATH")}
    env["REALISID_HOME"] = str(comfy.parent / "no-setup-here")  # not the host setup.sh recorded
    before = set((comfy / "output").glob("realisid*.png")) if (comfy / "output").is_dir() else set()
    proc = subprocess.run([sys.executable, "-m", "realisid", "run", str(fresh["workflow"])], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"ComfyUI: {comfy}" in proc.stderr
    assert f"model folders from {comfy / 'extra_model_paths.yaml'}" in proc.stderr
    assert "running Sample (SamplerCustomAdvanced)" in proc.stderr
    assert "Traceback" not in proc.stderr and "No module named 'torchaudio'" not in proc.stderr, proc.stderr[-4000:]
    written = set((comfy / "output").glob("realisid*.png")) - before
    assert len(written) == 1, sorted((comfy / "output").iterdir())
