"""Drive ComfyUI's real frontend in Debian's headless Chromium (Selenium), as in design/verified.md section 4.

Graphs cross the WebDriver boundary only as JSON strings: a round trip of objects turns `undefined` into `null`,
which the frontend's zod validation rejects with a toast.
"""

import contextlib
import json
import logging
import os
import pathlib
import time

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMEDRIVER = pathlib.Path("/usr/bin/chromedriver")
# The page's size in CSS pixels; REALISID_SCREENSHOT_SIZE=WxH overrides it (larger pictures, more readable text).
WINDOW = tuple(int(v) for v in os.environ.get("REALISID_SCREENSHOT_SIZE", "1400x900").split("x"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

log = logging.getLogger(__name__)


def browser_missing() -> str | None:
    """Why the browser flow cannot run here, or None when it can."""
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if absent:
        return f"{' and '.join(absent)} not installed (run scripts/setup_browser.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    return None


# The tutorial marked done, so a fresh user folder opens the default graph instead of the templates dialog; the
# rest only clears the picture: full node detail at any zoom, no minimap, fps counter, canvas menu or tab strip.
USER_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Graph.CanvasMenu": False,
    "Comfy.Workflow.WorkflowTabsPosition": "Sidebar",
}
# Set before the app's scripts run: the "Introducing Nodes 2.0" banner stays dismissed.
_BEFORE_APP = "localStorage.setItem('vueNodesBannerDismissed', 'true');"


def seed_user_settings(base_dir: pathlib.Path) -> None:
    settings = base_dir / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(USER_SETTINGS))


# Collected by the afterConfigureGraph hook, the list the frontend builds of node types it does not know.
_PROBE = """
window.__ci = {missing: null};
app.registerExtension({name: 'ci.missingNodeProbe', afterConfigureGraph(missing) {
  window.__ci.missing = (missing || []).map(m => typeof m === 'string' ? m : m.type);
}});
"""

_DISMISS = """
document.querySelectorAll('.p-dialog .p-dialog-close-button, .p-toast-message .p-toast-close-button')
  .forEach(b => b.click());
"""

_LOAD = """
const done = arguments[arguments.length - 1];
window.__ci.missing = null;
app.loadGraphData(JSON.parse(arguments[0]))
  .then(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 300)))))
  .then(() => done(null), e => done(String(e && e.stack || e)));
"""

# What the page reports about the loaded graph.
_STATE = """
const g = app.graph;
const links = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links || {});
const byId = id => g.getNodeById(id);
const badLinks = links.filter(l => {
  const o = byId(l.origin_id), t = byId(l.target_id);
  return !o || !t || !(o.outputs[l.origin_slot]?.links || []).includes(l.id) || t.inputs[l.target_slot]?.link !== l.id;
}).map(l => l.id);
const unconnected = [];
for (const n of g.nodes) {
  const required = n.constructor.nodeData?.input?.required || {};
  for (const inp of n.inputs || []) {
    if (inp.name in required && !inp.widget && inp.link == null) unconnected.push(`${n.id}:${n.type}.${inp.name}`);
  }
}
return JSON.stringify({
  missing: window.__ci.missing,
  unregistered: g.nodes.map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types)),
  errored: g.nodes.filter(n => n.has_errors).map(n => `${n.id}:${n.type}`),
  dialogs: [...document.querySelectorAll('.p-dialog')].map(e => e.innerText),
  toasts: [...document.querySelectorAll('.p-toast-message')].map(e => e.innerText),
  nodes: g.nodes.length, links: links.length, bad_links: badLinks, unconnected_required: unconnected,
});
"""

# What a user sees of the loaded graph's layout: nodes (title bar and badges included) that overlap, nodes outside
# every group, widget texts and titles the frontend truncates (its own rule: drawTruncatingText / truncateText), and
# where the view puts the graph's top-left corner on the screen.
_LAYOUT = """
const [left, top] = arguments[0];
const g = app.graph, canvas = app.canvas, ctx = canvas.ctx, ds = canvas.ds;
const TITLE = LiteGraph.NODE_TITLE_HEIGHT, MARGIN = 15, GAP = 5;
const badgeHeight = n => {
  try { return Math.max(0, ...(n.badges || []).map(b => (typeof b === 'function' ? b() : b).height || 0)); }
  catch (e) { return 0; }
};
const rects = g.nodes.map(n => {
  const [x, y, w, h] = n.boundingRect, b = badgeHeight(n);
  return {id: n.id, type: n.type, title: n.title, node: [x, y, w, h], all: b ? [x, y - b - 2, w, h + b + 2] : [x, y, w, h]};
});
const meets = (a, b) => a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3];
const inside = (a, b) => a[0] >= b[0] && a[1] >= b[1] && a[0] + a[2] <= b[0] + b[2] && a[1] + a[3] <= b[1] + b[3];
const overlaps = [];
for (let i = 0; i < rects.length; i++) for (let j = i + 1; j < rects.length; j++)
  if (meets(rects[i].all, rects[j].all)) overlaps.push(`${rects[i].title} / ${rects[j].title}`);
const groups = (g._groups || g.groups || []).map(gr => ({title: gr.title, box: [...(gr._bounding || gr.bounding)]}));
const outside = rects.filter(r => r.type !== 'Note' && !groups.some(gr => inside(r.all, gr.box))).map(r => r.title);
const measure = (text, font) => { ctx.save(); ctx.font = font; const w = ctx.measureText(text).width; ctx.restore(); return w; };
const cut = [];
for (const n of g.nodes) {
  const widthOf = w => w.width || n.size[0];
  if (measure(String(n.title), n.titleFontStyle) > n.size[0] - 2 * TITLE) cut.push(`${n.title} (title)`);
  for (const w of n.widgets || []) {
    if (!['combo', 'number', 'text', 'string'].includes(w.type) || w.value == null) continue;
    const stepped = w.type === 'combo' || w.type === 'number';
    const [lp, rp] = stepped ? [5, 20] : [0, 0];
    let value = String(w.value);
    if (w.type === 'number' && typeof w.value === 'number' && w.options?.precision != null)
      value = w.value.toFixed(w.options.precision);
    const label = w.label || w.localized_name || w.name;
    const room = widthOf(w) - (MARGIN * 2 + lp) - 2 * MARGIN - rp;
    if (measure(label, n.innerFontStyle) + GAP + measure(value, n.innerFontStyle) > room) cut.push(`${n.title}.${w.name}`);
  }
}
const screen = ([x, y]) => [(x + ds.offset[0]) * ds.scale, (y + ds.offset[1]) * ds.scale];
const corners = [...groups.map(gr => ({what: gr.title, at: screen(gr.box)})),
                 ...rects.filter(r => r.type === 'Note').map(r => ({what: r.title, at: screen(r.all)}))];
return JSON.stringify({overlaps, outside, cut, groups: groups.map(gr => gr.title), scale: ds.scale,
  hidden: corners.filter(c => c.at[0] < left || c.at[1] < top).map(c => `${c.what} at ${c.at.map(Math.round)}`),
  off_screen: corners.filter(c => c.at[0] > window.innerWidth || c.at[1] > window.innerHeight).map(c => c.what)});
"""

_PROMPT = """
const done = arguments[arguments.length - 1];
app.graphToPrompt().then(p => done(JSON.stringify(p.output)), e => done('ERROR ' + String(e)));
"""

# Fit every node (title bars included) into the canvas area that the app's floating bars leave free.
# LiteGraph draws a graph point p at (p + ds.offset) * ds.scale.
_FIT = """
const [left, top, right, bottom] = arguments[0];
let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
for (const n of app.graph.nodes) {
  const [x, y, w, h] = n.boundingRect;
  x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
}
const W = window.innerWidth - left - right, H = window.innerHeight - top - bottom;
const scale = Math.min(W / (x1 - x0), H / (y1 - y0), 1);
const ds = app.canvas.ds;
ds.scale = scale;
ds.offset = [(left + (W - scale * (x1 - x0)) / 2) / scale - x0, (top + (H - scale * (y1 - y0)) / 2) / scale - y0];
app.canvas.setDirty(true, true);
app.canvas.draw(true, true);
return scale;
"""
# Left: the sidebar; top: the workflow menu and the Run bar.
FIT_MARGINS = (76, 72, 16, 16)


class Frontend:
    """One headless Chromium on a ComfyUI page; close() ends it and any browser process it left."""

    def __init__(self, profile_dir: pathlib.Path):
        import psutil
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try a download
        options = Options()
        options.binary_location = str(CHROMIUM)
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={WINDOW[0]},{WINDOW[1]}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        self.driver.set_script_timeout(60)
        # --window-size includes the browser's frame; the page itself gets exactly WINDOW.
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _BEFORE_APP})
        self.browser_pids = [p.pid for p in psutil.Process(self.driver.service.process.pid).children(recursive=True)]

    def open(self, url: str, timeout: float = 90.0) -> None:
        """Load the app, wait for its default graph, drop the start-up console noise, register the probe."""
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.get(url)
        WebDriverWait(self.driver, timeout, 0.2).until(lambda d: d.execute_script(
            "return !!(window.app && app.graph && app.canvas && app.graph.nodes.length > 0)"))
        self.console()
        self.driver.execute_script(_PROBE)

    def load(self, workflow_text: str) -> dict:
        """loadGraphData from a JSON string; returns what the page then reports (see _STATE)."""
        self.driver.execute_script(_DISMISS)
        # a dialog still closing swallows the next one with its key (the Missing Models dialog of the previous
        # graph would hide this graph's): wait until the dismissed dialogs are gone
        deadline = time.monotonic() + 10
        while self.driver.execute_script("return document.querySelectorAll('.p-dialog').length") and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        error = self.driver.execute_async_script(_LOAD, workflow_text)
        if error:
            raise AssertionError(f"loadGraphData failed: {error}")
        return json.loads(self.driver.execute_script(_STATE))

    def wait_for_dialog(self, contains: str, timeout: float = 30.0) -> list[str]:
        """The open dialogs' texts once one contains `contains` (dialogs open after the graph's own load
        promise on a busy machine), or whatever is open when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            texts = self.driver.execute_script(
                "return [...document.querySelectorAll('.p-dialog')].map(e => e.innerText)")
            if any(contains in text for text in texts) or time.monotonic() > deadline:
                return texts
            time.sleep(0.25)

    def layout(self) -> dict:
        """The loaded graph's layout as a user sees it (see _LAYOUT), against the floating bars' FIT_MARGINS."""
        return json.loads(self.driver.execute_script(_LAYOUT, list(FIT_MARGINS[:2])))

    def api_prompt(self) -> dict:
        """The frontend's own UI-to-API conversion of the loaded graph (app.graphToPrompt().output)."""
        text = self.driver.execute_async_script(_PROMPT)
        if text.startswith("ERROR "):
            raise AssertionError(f"graphToPrompt failed: {text[6:]}")
        return json.loads(text)

    def screenshot(self, path: pathlib.Path) -> pathlib.Path:
        """Fit the whole graph into view, then save a PNG of the window."""
        scale = self.driver.execute_script(_FIT, list(FIT_MARGINS))
        log.info("%s: graph drawn at scale %.2f", path.name, scale)
        time.sleep(0.3)  # let the canvas repaint
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"screenshot not written: {path}")
        return path

    def console(self) -> list[str]:
        """Browser console lines since the last call (noisy by nature: 404s, offline api.comfy.org lookups)."""
        return [f"{e['level']} {e['message']}" for e in self.driver.get_log("browser")]

    def close(self) -> None:
        import psutil

        with contextlib.suppress(Exception):
            self.driver.quit()
        for pid in self.browser_pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    log.info("killing leftover browser process %d", pid)
                    proc.kill()
