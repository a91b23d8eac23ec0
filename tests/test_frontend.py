"""Every UI workflow loads in ComfyUI's real frontend (headless Chromium) with nothing reported missing or broken,
and the frontend's own UI-to-API conversion of it gives its API twin."""

import json
import math
import os
import pathlib

import pytest

from tests.conftest import stage_example_inputs
from tests.helpers import frontend
from tests.helpers.host import REPO
from tests.helpers.server import ComfyServer, server_base_dir

pytestmark = [pytest.mark.browser, pytest.mark.server,
              pytest.mark.skipif(frontend.browser_missing() is not None, reason=str(frontend.browser_missing()))]

UI_DIR = REPO / "workflows" / "ui"
API_DIR = REPO / "workflows" / "api"
WORKFLOWS = sorted(path.stem for path in UI_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def page(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("frontend")
    base, yaml = server_base_dir(root, models_dir)
    frontend.seed_user_settings(base)
    stage_example_inputs(base / "input")
    server = ComfyServer(base, yaml)
    browser = None
    try:
        server.wait_ready()
        browser = frontend.Frontend(root / "chromium-profile")
        browser.open(server.url)
        yield browser
    finally:
        if browser is not None:
            browser.close()
        server.stop()


def api_differences(ui_prompt: dict, twin: dict) -> list[str]:
    """Where the frontend's prompt disagrees with the API twin, over the inputs the twin declares."""
    problems = []
    if set(ui_prompt) != set(twin):
        problems.append(f"node ids: frontend {sorted(ui_prompt)} vs twin {sorted(twin)}")
    for node_id in sorted(set(ui_prompt) & set(twin), key=int):
        ours, theirs = twin[node_id], ui_prompt[node_id]
        if ours["class_type"] != theirs["class_type"]:
            problems.append(f"{node_id}: class {theirs['class_type']} vs twin {ours['class_type']}")
            continue
        for name, value in ours["inputs"].items():
            got = theirs["inputs"].get(name, "<absent>")
            same = (math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9)
                    if isinstance(value, float) and isinstance(got, int | float) else got == value)
            if not same:
                problems.append(f"{node_id}:{ours['class_type']}.{name}: frontend {got!r} vs twin {value!r}")
        extra = sorted(set(theirs["inputs"]) - set(ours["inputs"]))
        if extra:
            problems.append(f"{node_id}:{ours['class_type']}: frontend adds inputs {extra}")
    return problems


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_loads_without_reported_problems(page, name, tmp_path):
    text = (UI_DIR / f"{name}.json").read_text()
    workflow = json.loads(text)
    state = page.load(text)
    picture = page.screenshot(pathlib.Path(os.environ.get("REALISID_SCREENSHOT_DIR", tmp_path)) / f"{name}.png")
    assert state["missing"] == [], state
    assert state["unregistered"] == [] and state["errored"] == [], state
    assert state["dialogs"] == [] and state["toasts"] == [], state
    assert state["bad_links"] == [] and state["unconnected_required"] == [], state
    assert (state["nodes"], state["links"]) == (len(workflow["nodes"]), len(workflow["links"]))
    assert picture.stat().st_size > 10_000


@pytest.mark.parametrize("name", WORKFLOWS)
def test_frontend_prompt_equals_the_api_twin(page, name):
    page.load((UI_DIR / f"{name}.json").read_text())
    ui_prompt = page.api_prompt()
    twin = json.loads((API_DIR / f"{name}.json").read_text())
    assert api_differences(ui_prompt, twin) == []


def test_an_unknown_node_type_is_reported_missing(page):
    """Negative control: the same checks see a node type the server does not have."""
    workflow = json.loads((UI_DIR / f"{WORKFLOWS[0]}.json").read_text())
    renamed = workflow["nodes"][-1]
    renamed["type"] = "RealisIDDoesNotExist"
    state = page.load(json.dumps(workflow))
    assert state["missing"] == ["RealisIDDoesNotExist"]
    assert state["unregistered"] == ["RealisIDDoesNotExist"]
    assert state["errored"] == [f"{renamed['id']}:RealisIDDoesNotExist"]
    assert any("RealisIDDoesNotExist" in text for text in state["dialogs"]), state["dialogs"]


def test_a_changed_widget_value_shows_in_the_frontends_prompt(page):
    """Negative control for the twin comparison, end to end: one widget value edited in the UI file."""
    name = "realisid_single_person"
    workflow = json.loads((UI_DIR / f"{name}.json").read_text())
    node = next(n for n in workflow["nodes"] if n["type"] == "EmptyLatentImage")
    node["widgets_values"][0] += 64
    page.load(json.dumps(workflow))
    twin = json.loads((API_DIR / f"{name}.json").read_text())
    width = twin[str(node["id"])]["inputs"]["width"]
    assert api_differences(page.api_prompt(), twin) == [
        f"{node['id']}:EmptyLatentImage.width: frontend {width + 64} vs twin {width}"]


def test_api_differences_sees_a_changed_widget_value():
    """The comparison itself can fail: a changed value, a changed class and an extra input are all reported."""
    twin = {"1": {"class_type": "A", "inputs": {"x": 0.3, "clip": ["2", 0]}}, "2": {"class_type": "B", "inputs": {}}}
    same = {"1": {"class_type": "A", "inputs": {"x": 0.30000000000000004, "clip": ["2", 0]}},
            "2": {"class_type": "B", "inputs": {}}}
    assert api_differences(same, twin) == []
    changed = {"1": {"class_type": "A", "inputs": {"x": 0.4, "clip": ["2", 0], "y": 1}},
               "2": {"class_type": "C", "inputs": {}}}
    assert api_differences(changed, twin) == ["1:A.x: frontend 0.4 vs twin 0.3", "1:A: frontend adds inputs ['y']",
                                              "2: class C vs twin B"]
