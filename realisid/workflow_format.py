"""ComfyUI's two workflow formats: the API prompt the server executes and the UI graph the frontend saves.

The bundled workflows are written once as API prompts and rendered to the UI format here, so the twins can
never drift; `check_ui_workflow` validates a UI file against /object_info the way the frontend would read it
(node types exist, the link table is consistent, widget counts match).
"""

from __future__ import annotations

from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def object_info() -> dict:
    """What /object_info serves, computed in-process (the host and the packs must be loaded)."""
    import nodes

    return {name: node_info(name) for name in nodes.NODE_CLASS_MAPPINGS}


def node_info(class_type: str) -> dict:
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)), "name": class_type}


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    return [(name, info["input"][group][name]) for group in ("required", "optional")
            for name in order.get(group, []) if name in info["input"].get(group, {})]


def is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput", False)


def _widget_extras(spec: list) -> list:
    """Values the frontend stores after a widget's own: the seed control and the image-upload button."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    extras = []
    if options.get("control_after_generate"):
        extras.append("fixed")
    if options.get("image_upload"):
        extras.append("image")
    return extras


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def api_to_ui(prompt: dict, info: dict) -> dict:
    """Render an API prompt as a UI graph (version 0.4) with a simple left-to-right layout."""
    ids = {node_id: i + 1 for i, node_id in enumerate(prompt)}
    places = _layout(prompt, info)
    ui_nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = defaultdict(list)
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            if is_link(value):
                links.append([len(links) + 1, ids[value[0]], value[1], ids[node_id], name])
                out_links[(ids[value[0]], value[1])].append(len(links))
    for order, (node_id, node) in enumerate(prompt.items()):
        spec = info[node["class_type"]]
        ui_inputs, widgets = [], []
        for name, input_spec in _ordered_inputs(spec):
            value = node["inputs"].get(name)
            if is_widget(input_spec) and not is_link(value):
                widgets += [value if value is not None else _default(input_spec), *_widget_extras(input_spec)]
            elif not is_widget(input_spec):
                link = next((lk[0] for lk in links if lk[3] == ids[node_id] and lk[4] == name), None)
                ui_inputs.append({"name": name, "type": _type_name(input_spec[0]), "link": link})
        outputs = [{"name": spec["output_name"][i], "type": _type_name(kind), "slot_index": i,
                    "links": out_links.get((ids[node_id], i), [])} for i, kind in enumerate(spec["output"])]
        ui_nodes.append({
            "id": ids[node_id], "type": node["class_type"], "pos": list(places[node_id][:2]),
            "size": list(places[node_id][2:]), "flags": {}, "order": order, "mode": 0,
            "inputs": ui_inputs, "outputs": outputs, "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets, "title": node.get("_meta", {}).get("title", node["class_type"]),
        })
    ui_links = [[lid, src, slot, dst, _input_slot(ui_nodes[dst - 1], name), ui_nodes[src - 1]["outputs"][slot]["type"]]
                for lid, src, slot, dst, name in links]
    return {"last_node_id": len(ui_nodes), "last_link_id": len(ui_links), "nodes": ui_nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def _input_slot(ui_node: dict, name: str) -> int:
    return next(i for i, item in enumerate(ui_node["inputs"]) if item["name"] == name)


def _type_name(kind) -> str:
    return "COMBO" if isinstance(kind, list) else str(kind)


def _default(spec: list):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], list):
        return spec[0][0] if spec[0] else ""
    return options.get("options", [""])[0] if spec[0] == "COMBO" else None


NODE_WIDTH, COLUMN_GAP, ROW_GAP = 320, 60, 40
IMAGE_PREVIEW_HEIGHT = 320  # LoadImage shows the picture under its widgets


def _node_height(node: dict, spec: dict) -> int:
    inputs = _ordered_inputs(spec)
    widgets = sum(1 + len(_widget_extras(s)) for _, s in inputs if is_widget(s))
    sockets = max(len(spec["output"]), sum(1 for _, s in inputs if not is_widget(s)))
    preview = IMAGE_PREVIEW_HEIGHT if any(_widget_extras(s) == ["image"] for _, s in inputs) else 0
    return 40 + 22 * sockets + 24 * widgets + preview


def _layout(prompt: dict, info: dict) -> dict[str, tuple[int, int, int, int]]:
    """(x, y, w, h) per node: columns by depth, each source node just left of its first consumer, stacked."""
    columns = _columns(prompt)
    consumers: dict[str, list[str]] = defaultdict(list)
    for node_id, node in prompt.items():
        for value in node["inputs"].values():
            if is_link(value):
                consumers[value[0]].append(node_id)
    for node_id, node in prompt.items():
        if consumers[node_id] and not any(is_link(v) for v in node["inputs"].values()):
            columns[node_id] = max(0, min(columns[c] for c in consumers[node_id]) - 1)
    next_y: dict[int, int] = defaultdict(int)
    places = {}
    for node_id, node in prompt.items():
        column, height = columns[node_id], _node_height(node, info[node["class_type"]])
        places[node_id] = (40 + (NODE_WIDTH + COLUMN_GAP) * column, 40 + next_y[column], NODE_WIDTH, height)
        next_y[column] += height + ROW_GAP
    return places


def _columns(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if is_link(v)]
            depth[node_id] = 1 + max((visit(s) for s in sources), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def ui_to_api(ui: dict, info: dict) -> dict:
    """The API prompt of a UI graph (what the frontend's graphToPrompt sends); muted/bypassed nodes unsupported."""
    links = {lk[0]: lk for lk in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({node['type']}) is muted or bypassed; enable or delete it first")
        spec = info[node["type"]]
        inputs, values = {}, list(node.get("widgets_values", []))
        for name, input_spec in _ordered_inputs(spec):
            if is_widget(input_spec):
                if values:
                    inputs[name] = values.pop(0)
                    del values[: len(_widget_extras(input_spec))]
        for item in node.get("inputs", []):
            if item.get("link") is not None:
                link = links[item["link"]]
                inputs[item["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def check_ui_workflow(ui: dict, info: dict) -> list[str]:
    """Problems the frontend would meet loading this UI graph; empty when it is consistent."""
    problems = []
    nodes_by_id = {n["id"]: n for n in ui["nodes"]}
    for node in ui["nodes"]:
        if node["type"] not in info:
            problems.append(f"node {node['id']}: unknown type {node['type']}")
            continue
        spec = info[node["type"]]
        expected = sum(1 + len(_widget_extras(s)) for _, s in _ordered_inputs(spec) if is_widget(s))
        if len(node.get("widgets_values", [])) != expected:
            problems.append(f"node {node['id']} ({node['type']}): {len(node.get('widgets_values', []))} widget "
                            f"values, the node has {expected}")
    for link in ui["links"]:
        lid, src, src_slot, dst, dst_slot, kind = link
        if src not in nodes_by_id or dst not in nodes_by_id:
            problems.append(f"link {lid}: endpoint node missing")
            continue
        outputs, inputs = nodes_by_id[src]["outputs"], nodes_by_id[dst]["inputs"]
        if src_slot >= len(outputs) or lid not in outputs[src_slot].get("links", []):
            problems.append(f"link {lid}: not listed on output {src_slot} of node {src}")
        if dst_slot >= len(inputs) or inputs[dst_slot].get("link") != lid:
            problems.append(f"link {lid}: not listed on input {dst_slot} of node {dst}")
            continue
        src_type = info.get(nodes_by_id[src]["type"], {}).get("output", [None] * (src_slot + 1))[src_slot]
        dst_type = inputs[dst_slot]["type"]
        if src_type is not None and _type_name(src_type) != kind:
            problems.append(f"link {lid}: type {kind} but the output is {_type_name(src_type)}")
        if dst_type not in ("*", kind) and kind not in dst_type.split(","):
            problems.append(f"link {lid}: {kind} into an input of type {dst_type}")
    if ui["links"] and ui.get("last_link_id", 0) < max(lk[0] for lk in ui["links"]):
        problems.append("last_link_id is smaller than a link id")
    return problems
