"""ComfyUI's two workflow formats: the API prompt the server executes and the UI graph the frontend saves.

The bundled workflows are written once as API prompts and rendered to the UI format here, so the twins can
never drift; `check_ui_workflow` validates a UI file against /object_info the way the frontend would read it
(node types exist, the link table is consistent, widget counts match).
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# the frontend extension (web/realisid.js) applies the same file when a graph loads
LEGACY_WIDGETS_FILE = pathlib.Path(__file__).resolve().parents[2] / "web" / "legacy_widgets.json"
log = logging.getLogger(__name__)


@functools.cache
def _legacy_rules() -> dict:
    return {k: v for k, v in json.loads(LEGACY_WIDGETS_FILE.read_text()).items() if not k.startswith("_")}


def migrate_legacy_widgets(ui: dict) -> dict:
    """A copy of a UI graph whose nodes saved by earlier versions of this pack (legacy_widgets.json: a node type
    with exactly its old number of widget values) have the values of removed widgets dropped."""
    rules, out = _legacy_rules(), dict(ui)
    out["nodes"] = []
    for node in ui["nodes"]:
        rule, values = rules.get(node.get("type")), node.get("widgets_values")
        if rule and isinstance(values, list) and len(values) == rule["old_count"]:
            node = {**node, "widgets_values": [v for i, v in enumerate(values) if i not in rule["dropped"]]}
            log.info("node %s (%s) migrated: %s", node.get("id"), node["type"], rule["why"])
        out["nodes"].append(node)
    return out


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


# Nodes the frontend defines itself (no server class, never in the API prompt)
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def api_to_ui(prompt: dict, info: dict, note: str | None = None) -> dict:
    """Render an API prompt as a UI graph (version 0.4): the nodes in three groups (identity, layout, sampling)
    laid out left to right inside each, node widths that fit their longest widget text, a Note node with `note`,
    each model file's source in the node's `properties.models` (ComfyUI's Missing Models dialog), and a view
    that opens with the top-left of the graph clear of the frontend's top bar and sidebar."""
    from realisid import model_files

    ids = {node_id: i + 1 for i, node_id in enumerate(prompt)}
    places, groups = _layout(prompt, info, note)
    per_node_models, workflow_models = model_files.workflow_model_entries(prompt)
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
        properties = {"Node name for S&R": node["class_type"]}
        if node_id in per_node_models:
            properties["models"] = per_node_models[node_id]
        ui_nodes.append({
            "id": ids[node_id], "type": node["class_type"], "pos": list(places[node_id][:2]),
            "size": list(places[node_id][2:]), "flags": {}, "order": order, "mode": 0,
            "inputs": ui_inputs, "outputs": outputs, "properties": properties,
            "widgets_values": widgets, "title": node.get("_meta", {}).get("title", node["class_type"]),
        })
    if note is not None:
        x, y, w, h = places[NOTE_KEY]
        ui_nodes.append({"id": len(ui_nodes) + 1, "type": "Note", "pos": [x, y], "size": [w, h], "flags": {},
                         "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                         "widgets_values": [note], "title": NOTE_TITLE, "color": "#432", "bgcolor": "#653"})
    ui_links = [[lid, src, slot, dst, _input_slot(ui_nodes[dst - 1], name), ui_nodes[src - 1]["outputs"][slot]["type"]]
                for lid, src, slot, dst, name in links]
    ui = {"last_node_id": len(ui_nodes), "last_link_id": len(ui_links), "nodes": ui_nodes, "links": ui_links,
          "groups": groups, "config": {}, "extra": {"ds": _initial_view(places, groups)}, "version": 0.4}
    if workflow_models:
        ui["models"] = workflow_models
    return ui


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


# Geometry in graph units (LiteGraph: the title bar, 30 high, sits above a node's pos; the frontend's badges sit
# above the title bar). The frontend never shrinks a node below what it computes, only grows it.
MIN_NODE_WIDTH, COLUMN_GAP, ROW_GAP = 320, 70, 90
TITLE_HEIGHT, BADGE_SPACE = 30, 34
WIDGET_CHAR, TITLE_CHAR = 7.0, 8.5  # px per character: Arial 12 px (widgets) and 14 px (titles), generous
WIDGET_CHROME = 100  # margins, the combo/number arrows and the label-value gap around a widget's text
LOAD_IMAGE_HEIGHT = 340  # LoadImage: its widgets and a preview scaled into the rest
MULTILINE_HEIGHT = 110
GROUP_PAD, GROUP_TITLE, GROUP_GAP = 24, 46, 80
NOTE_KEY, NOTE_TITLE, NOTE_WIDTH = "__note__", "Read me: what to set", 480
# The view a workflow opens with: the frontend restores extra.ds, drawing a graph point p at
# (p + offset) * scale; the graph's top-left lands right of the sidebar and below the top bar.
VIEW_SCALE, VIEW_MARGIN_LEFT, VIEW_MARGIN_TOP = 0.75, 96, 100

GROUPS = {  # key -> (title, colour)
    "identity": ("1. Identity: who (reference photos, face analysis, identity model)", "#3f789e"),
    "layout": ("2. Layout: where each face goes, its pose", "#8A8"),
    "sampling": ("3. Sampling: prompt, size, seed, the branches, the image", "#a1309b"),
}
IDENTITY_RANK = {"RealisIDModelLoader": 0, "RealisIDInstantIDLoader": 0, "CLIPVisionLoader": 0,
                 "RealisIDFaceAnalysis": 0, "LoadImage": 1, "RealisIDFaceEncoder": 2, "RealisIDFacesCombine": 3}
LAYOUT_RANK = {"RealisIDLayoutFromNumbers": 0, "RealisIDLayoutFromMask": 0, "RealisIDLayoutFromPhoto": 0,
               "LoadImage": 1, "RealisIDLayoutDrivers": 2, "RealisIDLayoutPreview": 3, "PreviewImage": 4}


def group_of(prompt: dict, node_id: str) -> str:
    """identity / layout / sampling, by what the node does."""
    node = prompt[node_id]
    kind = node["class_type"]
    consumers = [prompt[c]["class_type"] for c in _consumers(prompt)[node_id]]
    if kind == "LoadImage":
        return "identity" if "RealisIDFaceEncoder" in consumers else "layout"
    if kind == "PreviewImage":
        sources = [prompt[v[0]]["class_type"] for v in node["inputs"].values() if is_link(v)]
        return "layout" if "RealisIDLayoutPreview" in sources else "sampling"
    if kind in IDENTITY_RANK:
        return "identity"
    if kind in LAYOUT_RANK:
        return "layout"
    return "sampling"


def _consumers(prompt: dict) -> dict[str, list[str]]:
    consumers: dict[str, list[str]] = defaultdict(list)
    for node_id, node in prompt.items():
        for value in node["inputs"].values():
            if is_link(value):
                consumers[value[0]].append(node_id)
    return consumers


def widget_texts(node: dict, spec: dict) -> list[tuple[str, str]]:
    """(label, shown value) of each single-line widget, as the frontend draws them."""
    texts = []
    for name, input_spec in _ordered_inputs(spec):
        value = node["inputs"].get(name)
        if not is_widget(input_spec) or is_link(value) or _multiline(input_spec):
            continue
        value = value if value is not None else _default(input_spec)
        texts.append((name, str(value)))
    return texts


def _multiline(spec: list) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] == "STRING" and bool(options.get("multiline"))


def node_width(node: dict, spec: dict) -> int:
    """Wide enough for the longest label + value and for the title (rounded up to 10)."""
    need = max([WIDGET_CHAR * (len(label) + len(value)) + WIDGET_CHROME for label, value in widget_texts(node, spec)]
               + [TITLE_CHAR * len(node.get("_meta", {}).get("title", node["class_type"])) + 70, MIN_NODE_WIDTH])
    return int(-(-need // 10) * 10)


def _node_height(node: dict, spec: dict) -> int:
    inputs = _ordered_inputs(spec)
    if node["class_type"] == "LoadImage":
        return LOAD_IMAGE_HEIGHT
    widgets = sum(1 + len(_widget_extras(s)) for name, s in inputs
                  if is_widget(s) and not is_link(node["inputs"].get(name)) and not _multiline(s))
    multiline = sum(1 for name, s in inputs if is_widget(s) and _multiline(s))
    sockets = max(len(spec["output"]), sum(1 for _, s in inputs if not is_widget(s)))
    preview = 260 if node["class_type"] in ("PreviewImage", "SaveImage") else 0
    return 30 + 22 * sockets + 26 * widgets + MULTILINE_HEIGHT * multiline + preview


def note_height(note: str, width: int = NOTE_WIDTH) -> int:
    per_line = max(1, int((width - 30) / WIDGET_CHAR))
    lines = sum(max(1, -(-len(line) // per_line)) for line in note.split("\n"))
    return 40 + 17 * lines


def _layout(prompt: dict, info: dict, note: str | None) -> tuple[dict, list[dict]]:
    """(x, y, w, h) per node id (and NOTE_KEY), and the groups. The note and the identity and layout groups
    stack on the left, the sampling group to their right. Inside a group: columns (identity and layout by role,
    sampling by depth), each node level with its first source in the group when there is room."""
    members: dict[str, list[str]] = defaultdict(list)
    for node_id in prompt:
        members[group_of(prompt, node_id)].append(node_id)
    places: dict = {}
    y = 0
    if note is not None:
        places[NOTE_KEY] = (0, TITLE_HEIGHT, NOTE_WIDTH, note_height(note))
        y = TITLE_HEIGHT + places[NOTE_KEY][3] + GROUP_GAP
    groups = []
    left_width = NOTE_WIDTH if note is not None else 0
    for key in ("identity", "layout"):
        if members[key]:
            box = _place_group(prompt, info, members[key], key, 0, y, places)
            groups.append(_group(key, box))
            y = box[1] + box[3] + GROUP_GAP
            left_width = max(left_width, box[2])
    if members["sampling"]:
        x = left_width + GROUP_GAP if (members["identity"] or members["layout"] or note) else 0
        groups.append(_group("sampling", _place_group(prompt, info, members["sampling"], "sampling", x, 0, places)))
    return places, groups


def _group(key: str, box: tuple[int, int, int, int]) -> dict:
    title, colour = GROUPS[key]
    return {"id": list(GROUPS).index(key) + 1, "title": title, "bounding": list(box), "color": colour,
            "font_size": 24, "flags": {}}


def _place_group(prompt, info, member_ids, key, x0, y0, places) -> tuple[int, int, int, int]:
    """Place a group's nodes with the group's top-left at (x0, y0); returns the group's bounding box."""
    inside = set(member_ids)
    if key == "sampling":
        columns = _columns({n: prompt[n] for n in member_ids})
    else:
        ranks = IDENTITY_RANK if key == "identity" else LAYOUT_RANK
        columns = {n: ranks.get(prompt[n]["class_type"], 0) for n in member_ids}
    order = sorted(member_ids, key=lambda n: (columns[n], list(prompt).index(n)))
    widths: dict[int, int] = defaultdict(int)
    sizes = {}
    for n in member_ids:
        spec = info[prompt[n]["class_type"]]
        sizes[n] = (node_width(prompt[n], spec), _node_height(prompt[n], spec))
        widths[columns[n]] = max(widths[columns[n]], sizes[n][0])
    used = sorted(widths)
    col_x, x = {}, x0 + GROUP_PAD
    for c in used:
        col_x[c] = x
        x += widths[c] + COLUMN_GAP
    top = y0 + GROUP_TITLE + BADGE_SPACE + TITLE_HEIGHT
    next_y: dict[int, int] = defaultdict(lambda: top)
    for n in order:
        column = columns[n]
        sources = [v[0] for v in prompt[n]["inputs"].values() if is_link(v) and v[0] in inside and v[0] in places]
        left = [s for s in sources if columns[s] < column]
        nearest = max((columns[s] for s in left), default=None)  # level with the source just left of it
        level = min((places[s][1] for s in left if columns[s] == nearest), default=top)
        y = max(next_y[column], level)
        places[n] = (col_x[column], y, *sizes[n])
        next_y[column] = y + sizes[n][1] + ROW_GAP + BADGE_SPACE
    right = max(places[n][0] + places[n][2] for n in member_ids) + GROUP_PAD
    bottom = max(places[n][1] + places[n][3] for n in member_ids) + GROUP_PAD
    return (x0, y0, right - x0, bottom - y0)


def _initial_view(places: dict, groups: list[dict]) -> dict:
    """extra.ds: the graph's top-left (the highest group or title bar) clear of the sidebar and the top bar."""
    x0 = min([p[0] for p in places.values()] + [g["bounding"][0] for g in groups])
    y0 = min([p[1] - TITLE_HEIGHT for p in places.values()] + [g["bounding"][1] for g in groups])
    return {"scale": VIEW_SCALE, "offset": [round(VIEW_MARGIN_LEFT / VIEW_SCALE - x0, 1),
                                            round(VIEW_MARGIN_TOP / VIEW_SCALE - y0, 1)]}


def _columns(prompt: dict) -> dict[str, int]:
    """Depth of each node counting only links between nodes of `prompt`; a node with no inputs sits just
    left of its first consumer."""
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if is_link(v) and v[0] in prompt]
            depth[node_id] = 1 + max((visit(s) for s in sources), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    consumers = {n: [c for c in cs if c in prompt] for n, cs in _consumers(prompt).items() if n in prompt}
    for node_id, node in prompt.items():
        if consumers.get(node_id) and not any(is_link(v) and v[0] in prompt for v in node["inputs"].values()):
            depth[node_id] = max(0, min(depth[c] for c in consumers[node_id]) - 1)
    return depth


def ui_to_api(ui: dict, info: dict) -> dict:
    """The API prompt of a UI graph (what the frontend's graphToPrompt sends, after the same migration of graphs
    saved by earlier versions); muted/bypassed nodes unsupported."""
    ui = migrate_legacy_widgets(ui)
    links = {lk[0]: lk for lk in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
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


def _widget_counts(spec: dict) -> tuple[int, int]:
    """(all widget values, those up to the last required widget) of a node spec; optional inputs come last."""
    sizes = [(1 + len(_widget_extras(s)), name in spec["input"].get("required", {}))
             for name, s in _ordered_inputs(spec) if is_widget(s)]
    required = max((i + 1 for i, (_, req) in enumerate(sizes) if req), default=0)
    return sum(n for n, _ in sizes), sum(n for n, _ in sizes[:required])


def check_ui_workflow(ui: dict, info: dict) -> list[str]:
    """Problems the frontend would meet loading this UI graph (after its migration of graphs saved by earlier
    versions); empty when it is consistent."""
    ui = migrate_legacy_widgets(ui)
    problems = []
    nodes_by_id = {n["id"]: n for n in ui["nodes"]}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        if node["type"] not in info:
            problems.append(f"node {node['id']}: unknown type {node['type']}")
            continue
        expected, required = _widget_counts(info[node["type"]])
        count = len(node.get("widgets_values", []))
        # a graph saved before an optional widget was added lacks its value: the frontend (and ui_to_api) use
        # the default, so fewer values are fine as long as every required widget has one
        if not required <= count <= expected:
            problems.append(f"node {node['id']} ({node['type']}): {count} widget values, the node has {expected}")
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
