"""Smoke test of benchmarks/step_cost.py in --quick mode: it runs, and its report has every figure, finite.

No timing is asserted (timings on a shared CI machine are meaningless); only presence, shape and finiteness.
"""

import importlib.util
import json
import math

import pytest

from tests.helpers import host

STEP_COST = host.REPO / "benchmarks" / "step_cost.py"
PER_K = ("realisid_step", "local_batched", "local_sequential", "global_per_person", "global_union")
SINGLE = ("base", "base_controlnet", "unet_with_residuals")
DERIVED = ("sum_of_parts_s", "step_over_parts", "local_batched_over_sequential", "realisid_over_base_controlnet",
           "realisid_over_base", "global_union_over_per_person", "footprint_over_k1", "working_over_k1")


def _load_module():
    spec = importlib.util.spec_from_file_location("step_cost", STEP_COST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "step_cost_quick"
    _load_module().main(["--quick", "--family", "sdxl", "--out", str(out)])
    return out, json.loads(out.with_suffix(".json").read_text())


def _check_figure(figure: dict, repeats: int) -> None:
    assert len(figure["times_s"]) == repeats
    assert math.isfinite(figure["median_s"]) and figure["median_s"] > 0
    assert figure["peak_bytes"] > 0 and figure["working_bytes"] >= 0


def test_report_has_every_figure(report):
    _, data = report
    ks, repeats, results = data["config"]["ks"], data["config"]["repeats"], data["results"]
    assert ks == [1, 2] and data["config"]["batch"] == 1
    for name in SINGLE:
        _check_figure(results[name], repeats)
    for group in PER_K:
        assert sorted(results[group]) == ["1", "2"], group
        for k in ("1", "2"):
            _check_figure(results[group][k], repeats)
    for group in ("base", "base_controlnet"):
        assert results[group]["footprint_bytes"] > results[group]["working_bytes"]
    assert data["config"]["weight_bytes"]["controlnet"] > 0 and data["config"]["weight_bytes"]["realisid"] > 0
    face = results["face_analysis"]
    assert "skipped" in face or (face["faces_found"] == 1 and math.isfinite(face["median_s"]))


def test_derived_figures_and_targets(report):
    _, data = report
    derived = data["derived"]
    for name in DERIVED:
        assert sorted(derived[name]) == ["1", "2"], name
        assert all(math.isfinite(v) and v > 0 for v in derived[name].values()), name
    # sum of parts is recomputed independently from the raw figures
    r = data["results"]
    parts = r["unet_with_residuals"]["median_s"] + r["global_per_person"]["2"]["median_s"] + \
        r["local_batched"]["2"]["median_s"]
    assert derived["sum_of_parts_s"]["2"] == pytest.approx(parts)
    assert [t["id"] for t in data["targets"]] == ["i", "ii", "iii", "iv"]
    assert all(isinstance(t["passed"], bool) and math.isfinite(t["value"]) for t in data["targets"])


def test_machine_and_outputs(report):
    out, data = report
    machine = data["machine"]
    assert machine["cpu"] and machine["torch"] and machine["cpu_count"] >= 1
    assert data["config"]["dtype"] == "fp32" and data["config"]["device"] == "cpu"
    md = out.with_suffix(".md").read_text()
    assert "| target |" in md and "RealisID step" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused():
    module = _load_module()
    with pytest.raises(SystemExit):
        module.parse_args(["--repeats", "0"])


def test_train_throughput_smoke(tmp_path):
    """benchmarks/train_throughput.py runs a few tiny training steps and reports its figures (no timing asserted)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "train.json"
    env = {**os.environ, "COMFYUI_DIR": str(host.comfyui_dir())}
    proc = subprocess.run([sys.executable, str(host.REPO / "benchmarks" / "train_throughput.py"), "--steps", "2",
                           "--warmup", "1", "--json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["images_per_s"] > 0 and math.isfinite(result["final_loss"])
    assert result["peak_memory_mb"] > 0 and result["batch_size"] == 2
    assert result["machine"]["cpu"] and result["machine"]["gpu"] is None  # realisid.machine.description


def test_train_throughput_mini_smoke(tmp_path):
    """benchmarks/train_throughput_mini.py prepares a few Mini scenes, stores their latents and texts, and times the
    real trainer with and without the encoders (its figures are well-formed; no timing asserted)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "mini.json"
    env = {**os.environ, "COMFYUI_DIR": str(host.comfyui_dir()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(host.REPO / "benchmarks" / "train_throughput_mini.py"), "--scenes", "4",
                           "--steps", "1", "--warmup", "1", "--batch-size", "2", "--work", str(tmp_path / "work"),
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"encoders_included", "encoders_excluded"}
    for figures in result["results"].values():
        assert figures["images_per_s"] == pytest.approx(2 / figures["seconds_per_step"], rel=1e-2)
    assert result["encoder_share"] < 1 and result["machine"]["gpu"] is None
    assert (tmp_path / "work" / "cache_stored" / "latents").is_dir()  # the excluded set-up read real stores
