"""The README documents every node (generated reference, up to date) and every bundled workflow."""

import importlib.util

from realisid.host import workflow_format
from tests.helpers.host import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("node_reference", REPO / "scripts" / "node_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_node_reference_in_readme_is_up_to_date(pack_node_ids):
    script = load_script()
    readme = (REPO / "README.md").read_text()
    expected = script.updated_readme(readme, script.render(workflow_format.object_info()))
    assert readme == expected, "run scripts/node_reference.py"
    for node_id in pack_node_ids:
        assert f"(`{node_id}`," in readme, node_id


def test_readme_names_every_workflow():
    readme = (REPO / "README.md").read_text()
    for path in (REPO / "workflows" / "api").glob("*.json"):
        assert f"`{path.stem}" in readme, path.stem


def test_readme_opens_with_the_two_commands_then_the_manager_install():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == [
        "bash scripts/setup.sh && bash scripts/test.sh", "bash scripts/setup.sh && bash scripts/run.sh"]
    sections = [line for line in readme.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Install in ComfyUI (users)", sections[:3]
    install = readme.split("## Install in ComfyUI (users)", 1)[1].split("\n## ", 1)[0]
    assert "ComfyUI Manager" in install and "python install.py" in install


def test_readme_gives_every_model_file_its_source_size_and_licence():
    from realisid import model_files

    readme = (REPO / "README.md").read_text()
    table = readme.split("## Which path needs what", 1)[1].split("### Estimated VRAM", 1)[0]
    for entry in model_files.CATALOGUE:
        shown = entry.name.split("/")[1] if entry.directory == "insightface" else entry.name
        assert shown in table, entry.name
        assert (entry.url or ("ships in the pack" if entry.bundled else "no public source")) in table, entry.name
        assert entry.size.split()[0] in table, (entry.name, entry.size)
        assert entry.licence.split(" (")[0].split(":")[-1].strip().split()[0] in table, (entry.name, entry.licence)
    assert table.count("Apache-2.0") >= 2 and "non-commercial" in table
    assert "68-point" in table and "iBUG 300-W" in table


def test_readme_vram_figures_are_labelled_estimates_that_match_the_benchmark():
    import json

    readme = (REPO / "README.md").read_text()
    vram = readme.split("### Estimated VRAM on a consumer GPU", 1)[1].split("\n## ", 1)[0]
    assert vram.lstrip().startswith("**Estimated, not measured on a consumer card**")
    assert "benchmarks/results/step_cost_h200_fp16.md" in vram
    results = json.loads((REPO / "benchmarks" / "results" / "step_cost_h200_fp16.json").read_text())["results"]
    gib = 2 ** 30
    for figure in (results["base"]["footprint_bytes"], results["base_controlnet"]["footprint_bytes"],
                   *(results["realisid_step"][k]["footprint_bytes"] for k in ("1", "2", "4", "8"))):
        assert f"{figure / gib:.1f} GiB" in vram or f"{figure / gib:.1f} /" in vram or f"/ {figure / gib:.1f}" in vram, \
            figure / gib


def test_docs_point_only_at_files_in_the_repository():
    import re

    for path in [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        assert not re.search(r"shared/design|/work/|method\.md|verified\.md", text), path.name


def test_the_evaluation_plan_in_the_docs_fits_the_bundled_workflow(pack_node_ids):
    import json

    from realisid.evaluate.harness import EvalPlan, WorkflowGenerator

    doc = (REPO / "docs" / "evaluation.md").read_text()
    plan = json.loads(doc.split("```json\n", 1)[1].split("```", 1)[0])
    workflow = doc.split("--workflow workflows/", 1)[1].split()[0]
    template = json.loads((REPO / "workflows" / workflow).read_text())
    WorkflowGenerator(template, plan["mapping"])  # every target names a node and one of its inputs
    cases = EvalPlan.from_dict(plan).cases()
    assert cases
    kinds = {"no_local": "RealisIDLocalBranchApply", "no_global": "RealisIDGlobalLocationApply"}
    for variant, kind in kinds.items():
        (target, value), = plan["variants"][variant].items()
        node, name = target.split(".")
        assert template[node]["class_type"] == kind and name in template[node]["inputs"] and value == 0.0
    face = next(n for n in template.values() if n["class_type"] == "RealisIDLayoutFromNumbers")
    # the harness puts a one-person row's face at x = 0.5, y = face_y: where the workflow's own face node does
    assert plan["persons"] == [1] and face["inputs"]["x"] == 0.5 and plan["face_y"] == face["inputs"]["y"]
    assert {"width": plan["width"], "height": plan["height"]}.items() <= next(
        n["inputs"] for n in template.values() if n["class_type"] == "EmptyLatentImage").items()


def test_pyproject_icon_is_in_the_repository():
    import tomllib

    icon = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["Icon"]
    path = icon.split("/main/", 1)[1]
    assert (REPO / path).is_file(), icon
    from PIL import Image

    assert Image.open(REPO / path).size[0] >= 128
