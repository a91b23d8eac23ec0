"""Renders the node reference (every RealisID node: inputs, types, defaults, outputs) into README.md.

The text between the README's `<!-- nodes:begin -->` and `<!-- nodes:end -->` markers is generated from the
node schemas the host reports, so the docs cannot drift (tests/test_docs.py checks it).

    COMFYUI_DIR=... python scripts/node_reference.py
"""

from __future__ import annotations

import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- nodes:begin -->", "<!-- nodes:end -->"


def _type(spec: list) -> str:
    kind = spec[0]
    if isinstance(kind, list):
        return "choice"
    return "choice" if kind == "COMBO" else str(kind)


def _default(spec: list) -> str:
    """The declared default only: a file list's first entry depends on the machine, so it is not shown."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return f"`{options['default']}`" if "default" in options else ""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(info: dict) -> str:
    lines = []
    for node_id in sorted(n for n in info if n.startswith("RealisID")):
        spec = info[node_id]
        lines += [f"### {spec.get('display_name', node_id)} (`{node_id}`, {spec['category']})", "",
                  _cell(spec.get("description", "")), "", "| input | type | default | what it does |",
                  "|---|---|---|---|"]
        for group in ("required", "optional"):
            for name in spec.get("input_order", {}).get(group, []):
                input_spec = spec["input"][group][name]
                options = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
                optional = " (optional)" if group == "optional" else ""
                lines.append(f"| `{name}`{optional} | {_type(input_spec)} | {_default(input_spec)} | "
                             f"{_cell(options.get('tooltip', ''))} |")
        outputs = ", ".join(f"`{n}` ({t})" for n, t in zip(spec["output_name"], spec["output"], strict=True))
        lines += ["", f"Outputs: {outputs}.", ""]
    return "\n".join(lines).strip() + "\n"


def updated_readme(readme: str, reference: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"README.md has no {BEGIN} marker")
    return f"{head}{BEGIN}\n{reference}{END}{tail}"


def main() -> None:
    sys.path.insert(0, str(REPO))
    from realisid.host import comfy_host, workflow_format

    with comfy_host.quiet_torchaudio():
        comfy_host.boot(os.environ["COMFYUI_DIR"], cpu=True)
        comfy_host.load_pack()
    readme = REPO / "README.md"
    readme.write_text(updated_readme(readme.read_text(), render(workflow_format.object_info())))


if __name__ == "__main__":
    main()
