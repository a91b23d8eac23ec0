"""The README documents every node (generated reference, up to date) and every bundled workflow."""

import importlib.util

from realisid import workflow_format
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
