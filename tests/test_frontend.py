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


def model_files_present(models_dir):
    """Every file the workflows list, under its name (tiny stand-ins; the insightface pack is a fake one)."""
    from tests.helpers import fake_insightface, fake_instantid
    from tests.helpers import tiny_host_models as tiny

    if not (models_dir / "instantid" / "ip-adapter.bin").exists():
        fake_instantid.write_instantid(models_dir, tiny.unet_config("sdxl"))
    if not (models_dir / "insightface" / "models" / "antelopev2").is_dir():
        fake_insightface.build_fake_pack(str(models_dir / "insightface"), "antelopev2")


def open_frontend(root, models_dir):
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


@pytest.fixture(scope="module")
def page(tmp_path_factory, models_dir):
    """The frontend of a server that has every model file the workflows name."""
    model_files_present(models_dir)
    yield from open_frontend(tmp_path_factory.mktemp("frontend"), models_dir)


@pytest.fixture(scope="module")
def bare_page(tmp_path_factory):
    """The frontend of a server with no model files at all (a fresh install: its model folders are empty)."""
    root = tmp_path_factory.mktemp("frontend-bare")
    empty = root / "no-models"
    empty.mkdir()
    yield from open_frontend(root, empty)


def listed_models(workflow: dict) -> set[str]:
    """'directory / name' of every model file the workflow lists: what the Missing Models dialog shows."""
    entries = [m for node in workflow["nodes"] for m in node.get("properties", {}).get("models", [])]
    return {f"{m['directory']} / {m['name']}" for m in entries + workflow.get("models", [])}


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
    renamed = [n for n in workflow["nodes"] if n["type"] != "Note"][-1]
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


def test_a_layout_saved_with_the_old_output_size_widgets_loads_with_its_values(page):
    """web/realisid.js migrates a graph saved before the layout nodes dropped width/height (their 5 widget values,
    now 3): the frontend's prompt equals the API twin. Without the extension x would read 1024."""
    from tests.test_runner import saved_with_the_old_layout_size

    name = "realisid_two_people"
    old, count = saved_with_the_old_layout_size(json.loads((UI_DIR / f"{name}.json").read_text()))
    assert count == 2
    state = page.load(json.dumps(old))
    assert state["dialogs"] == [] and state["toasts"] == [], state
    assert api_differences(page.api_prompt(), json.loads((API_DIR / f"{name}.json").read_text())) == []
    assert any("RealisID: node" in line and "migrated" in line for line in page.console())


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


DOWNLOADS = [n for n in WORKFLOWS if listed_models(json.loads((UI_DIR / f"{n}.json").read_text()))]
BUNDLED = [n for n in WORKFLOWS if n not in DOWNLOADS]  # RealisID-Mini: every file ships in the pack


@pytest.mark.parametrize("name", DOWNLOADS)
def test_missing_models_dialog_lists_every_file_of_the_workflow(bare_page, name):
    """With the model files absent, ComfyUI's own Missing Models dialog names each file (with its source) the
    moment the workflow loads, all at once; test_ui_workflow_loads_without_reported_problems is the other half
    (files present: no dialog)."""
    workflow = json.loads((UI_DIR / f"{name}.json").read_text())
    expected = listed_models(workflow)
    assert expected, name
    bare_page.load(json.dumps(workflow))
    opened = bare_page.wait_for_dialog("/ ")
    dialogs = [text for text in opened if "/ " in text]
    assert dialogs, opened
    shown = "\n".join(dialogs)
    assert sorted(m for m in expected if m not in shown) == [], shown


@pytest.mark.parametrize("name", BUNDLED)
def test_a_workflow_of_bundled_files_opens_no_missing_models_dialog(bare_page, name):
    """The Mini workflows name only files that ship in the pack: nothing to download, so no Missing Models
    dialog even on a server without them (the negative twin of the test above, same wait)."""
    assert name.startswith("mini_")
    bare_page.load((UI_DIR / f"{name}.json").read_text())
    assert [t for t in bare_page.wait_for_dialog("/ ", timeout=5) if "/ " in t] == []


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_opens_readable(page, name):
    """At the zoom it opens with: the top-left (the Note and the identity group) clear of the sidebar and the top
    bar, no node (with its title bar and badges) over another, every node in a group, no label cut short."""
    page.load((UI_DIR / f"{name}.json").read_text())
    layout = page.layout()
    assert layout["overlaps"] == [], layout["overlaps"]
    assert layout["outside"] == [] and len(layout["groups"]) >= 2, layout
    assert layout["cut"] == [], layout["cut"]
    assert layout["hidden"] == [], layout["hidden"]
    assert not [what for what in layout["off_screen"] if "Identity" in what or what.startswith("Read me")], layout
