"""Start the real ComfyUI server (main.py --cpu) on a free loopback port and talk to it over HTTP."""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.helpers import host


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    def __init__(self, base_dir: pathlib.Path, extra_paths_yaml: pathlib.Path | None = None):
        self.base_dir = base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_dir / "server.log"
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(base_dir), "--database-url", "sqlite:///:memory:", "--disable-metadata"]
        if extra_paths_yaml is not None:
            args += ["--extra-model-paths-config", str(extra_paths_yaml)]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(args, cwd=host.comfyui_dir(), stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.log()}")
            with contextlib.suppress(OSError):
                self.get("/system_stats")
                return
            time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-6000:]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        status, reply = self.post("/prompt", {"prompt": prompt, "client_id": "realisid-tests"})
        if status != 200:
            raise AssertionError(f"prompt rejected ({status}): {json.dumps(reply)[:2000]}")
        prompt_id = reply["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") != "success":
                    raise AssertionError(f"prompt failed: {json.dumps(entry['status'])[:3000]}\n{self.log()}")
                return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def server_base_dir(root: pathlib.Path, models_dir: pathlib.Path | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """A base directory with this pack (and the tiny-model pack) in custom_nodes; returns (base, yaml)."""
    base = root / "comfy-base"
    custom = base / "custom_nodes"
    custom.mkdir(parents=True, exist_ok=True)
    (custom / "ComfyUI-RealisID").symlink_to(host.REPO, target_is_directory=True)
    (custom / "realisid_tiny_models").symlink_to(host.REPO / "tests" / "helpers" / "tiny_pack", target_is_directory=True)
    (base / "user" / "default").mkdir(parents=True, exist_ok=True)
    yaml = root / "extra_model_paths.yaml"
    folders = ["checkpoints", "controlnet", "clip_vision", "realisid", "instantid", "insightface"]
    lines = ["tests:", f"    base_path: {models_dir or base / 'models'}"] + [f"    {f}: {f}" for f in folders]
    yaml.write_text("\n".join(lines) + "\n")
    return base, yaml
