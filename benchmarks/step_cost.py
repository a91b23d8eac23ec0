"""Per-step cost of RealisID against the plain base UNet and one full-resolution ControlNet (issue 8, part 3).

Every figure comes from ONE run (same process, machine, dtype, sizes) so the ratios are comparable. A "step" is
what ComfyUI does for one sampler call: `control.get_control(...)` then `BaseModel.apply_model(...)` on a latent
batch of `--batch` (2 = cond + uncond of one CFG step). Weights are random (no files are read); cost does not
depend on their values. See benchmarks/README.md for what each figure means.

    python benchmarks/step_cost.py                                     # tiny SDXL family on CPU
    python benchmarks/step_cost.py --real-size --device cuda --dtype fp16 --size 128 --out benchmarks/results/step_cost_h100
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from real_shapes import REAL_UNET  # noqa: E402  (shared with the other benchmark)

REPO = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger("step_cost")

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
TEXT_TOKENS = 77
ID_TOKENS = 16
FACE_SIDE = 1.0 / 6.0  # face box side as a fraction of the image side
TARGETS = {"parts": 0.10, "local_batched": 0.5, "controlnet": 1.15, "memory": 1.2}


# ----------------------------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("sdxl", "sd15"), default="sdxl")
    p.add_argument("--real-size", action="store_true", help="real SDXL/SD1.5 UNet shapes (random weights)")
    p.add_argument("--size", type=int, default=None, help="latent side (128 = 1024 px); default 128 real, 64 tiny")
    p.add_argument("--crop-size", type=int, default=None, help="local crop S (latent); default 64 real, size/2 tiny")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=2, help="latent batch (2 = cond + uncond of one CFG step)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="face counts K")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-faces", action="store_true", help="skip the face-analysis timing (g)")
    p.add_argument("--quick", action="store_true", help="smoke mode: size 16, batch 1, K 1 2, 1 repeat, 1 warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI folder (or $COMFYUI_DIR)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "step_cost_cpu"),
                   help="output path without extension (.json, .md and .png are written)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.ks, args.repeats, args.warmup = args.size or 16, 1, [1, 2], 1, 1
    args.size = args.size or (128 if args.real_size else 64)
    args.crop_size = args.crop_size or (64 if args.real_size else max(8, args.size // 2))
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1 or min(args.ks) < 1:
        p.error("--repeats, --batch and every K must be >= 1, --warmup >= 0")
    return args


def boot_host(args: argparse.Namespace) -> None:
    """Make ComfyUI importable (as the tests' host does); --cpu semantics only for --device cpu."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    # bind `tests` to this repo before ComfyUI's folder (which has its own tests/ package) joins sys.path
    from realisid.host import comfy_host
    from tests.helpers import host

    root = args.comfyui_dir or str(host.comfyui_dir())
    comfy_host.boot(root, cpu=args.device == "cpu")
    args.comfyui_dir = root


# ----------------------------------------------------------------------------------------------- timing + memory

class RssSampler:
    """Peak resident set size while active, sampled every `interval` s by a thread (CPU memory, approximate)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.peak = self.start = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.start = self.peak = self.process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


class Timer:
    """Median wall time and peak memory of several callables on one device, measured INTERLEAVED (each repeat
    runs every figure once, round robin) so that load drift on a shared machine hits all figures alike."""

    def __init__(self, device, warmup: int, repeats: int):
        import torch

        self.torch, self.device, self.warmup, self.repeats = torch, device, warmup, repeats
        self.cuda = device.type == "cuda"

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def _time(self, fn) -> float:
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - t0

    def _memory(self, fn) -> tuple[int, int]:
        memory = CudaPeak(self.device) if self.cuda else RssSampler()
        self._sync()
        with memory:
            fn()
            self._sync()
        return int(memory.peak), int(memory.peak - memory.start)

    def measure_all(self, figures: dict[str, Callable[[], object]], progress=None) -> dict[str, dict]:
        """Warm-up, then `repeats` interleaved timed rounds, then ONE memory call per figure (kept apart from
        the timings: the RSS sampling thread and CUDA cache resets would perturb them)."""
        times = {name: [] for name in figures}
        memory = {}
        with self.torch.inference_mode():
            for fn in figures.values():
                for _ in range(self.warmup):
                    fn()
                _tick(progress)
            for _ in range(self.repeats):
                for name, fn in figures.items():
                    times[name].append(self._time(fn))
                    _tick(progress)
            for name, fn in figures.items():
                memory[name] = self._memory(fn)
                _tick(progress)
        return {name: {"median_s": statistics.median(times[name]), "times_s": times[name],
                       "peak_bytes": memory[name][0], "working_bytes": memory[name][1]} for name in figures}


def _tick(progress) -> None:
    if progress is not None:
        progress.update(1)


class CudaPeak:
    """torch.cuda.max_memory_allocated over a block (reset at entry); `start` is what was allocated before."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        self.start = self.peak = 0

    def __enter__(self):
        self.torch.cuda.empty_cache()
        self.torch.cuda.reset_peak_memory_stats(self.device)
        self.start = self.torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        self.peak = self.torch.cuda.max_memory_allocated(self.device)


# ----------------------------------------------------------------------------------------------- models + inputs

def fill_random_(module, seed: int, std: float = 0.02):
    """comfy ops leave weights uninitialised: N(0, std) on the module's device, norm weights 1, biases 0."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif "norm" in name and param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, std)
    return module


def unet_config_for(args) -> dict:
    from tests.helpers import tiny_host_models as tiny

    return dict(REAL_UNET[args.family]) if args.real_size else tiny.unet_config(args.family)


def build_base(args, unet_config: dict, device, dtype):
    """A ComfyUI BaseModel (model_base.SDXL / BaseModel) of the family's shape, random weights, on device."""
    import comfy.supported_models

    from tests.helpers import tiny_host_models as tiny

    if args.real_size:
        cls = comfy.supported_models.SDXL if args.family == "sdxl" else comfy.supported_models.SD15
    else:
        cls = tiny.FAMILIES[args.family]
    model_config = cls(dict(unet_config))
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({}, device=device)
    fill_random_(base.diffusion_model, args.seed)
    return base.eval()


def build_controlnet(unet_config: dict, device, dtype, seed: int):
    """A standard full-resolution ControlNet (3-channel image hint), the InstantID-like anchor."""
    import comfy.cldm.cldm
    import comfy.ops

    cfg = {k: v for k, v in unet_config.items() if k not in ("out_channels", "transformer_depth_output", "dtype")}
    if cfg.get("adm_in_channels") and cfg.get("num_classes") is None:
        cfg["num_classes"] = "sequential"
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=dtype, device=device,
                                     operations=comfy.ops.disable_weight_init, **cfg)
    return fill_random_(net, seed).eval()


def build_realisid(unet_config: dict, crop_size: int, device, dtype, seed: int):
    from realisid import checkpoint

    proj = {"dim": 64, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": ID_TOKENS, "embedding_dim": 64,
            "ff_mult": 2, "source_tokens": 1}  # the projector runs once per image, not per step: keep it small
    model = checkpoint.build_realisid_model(unet_config, identity_space="benchmark", projector_config=proj,
                                            crop_size=crop_size, dtype=dtype, init=False)
    model.nets.to(device)
    fill_random_(model.nets, seed)
    model.nets.eval()
    return model


def face_boxes(k: int) -> list[tuple[float, float, float, float]]:
    """K square boxes of side 1/6 on a grid spread over the image."""
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    boxes = []
    for i in range(k):
        cx, cy = (i % cols + 0.5) / cols, (i // cols + 0.5) / rows
        boxes.append((cx - FACE_SIDE / 2, cy - FACE_SIDE / 2, cx + FACE_SIDE / 2, cy + FACE_SIDE / 2))
    return boxes


def make_faces(k: int, context_dim: int, crop_size: int, seed: int):
    import torch

    from realisid.control import FaceCondition

    gen = torch.Generator().manual_seed(seed)
    side = crop_size * 8
    return [FaceCondition(p_id=torch.randn(ID_TOKENS, context_dim, generator=gen),
                          landmark_hint=torch.rand(3, side, side, generator=gen), box=box)
            for box in face_boxes(k)]


class Inputs:
    """One sampler call's inputs: noisy latent x, sigma, text context, (SDXL) y; `cond` as ComfyUI passes it."""

    def __init__(self, base, unet_config: dict, args, device):
        import torch

        gen = torch.Generator().manual_seed(args.seed + 7)
        b, s = args.batch, args.size
        ms = base.model_sampling
        self.x = torch.randn(b, 4, s, s, generator=gen).to(device)
        self.sigma = torch.full((b,), float(ms.percent_to_sigma(0.5)), device=device)
        ctx_dim = int(unet_config["context_dim"])
        self.context = torch.randn(b, TEXT_TOKENS, ctx_dim, generator=gen).to(device)
        adm = unet_config.get("adm_in_channels")
        self.y = torch.randn(b, int(adm), generator=gen).to(device) if adm else None
        self.cond = {"c_crossattn": self.context}
        if self.y is not None:
            self.cond["y"] = self.y
        self.batched_number = b

    def extra(self) -> dict:
        return {"y": self.y} if self.y is not None else {}


def step_fn(base, inputs: Inputs, control=None) -> Callable[[], object]:
    """One sampler call: the control's residuals (if any), then the base UNet through apply_model."""
    def run():
        residuals = None
        if control is not None:
            residuals = control.get_control(inputs.x, inputs.sigma, inputs.cond, inputs.batched_number, {})
        return base.apply_model(inputs.x, inputs.sigma, c_crossattn=inputs.context, control=residuals,
                                transformer_options={}, **inputs.extra())
    return run


def unet_with_residuals_fn(base, inputs: Inputs, residuals: dict) -> Callable[[], object]:
    def run():
        fresh = {key: list(values) for key, values in residuals.items()}  # the UNet pops what it applies
        return base.apply_model(inputs.x, inputs.sigma, c_crossattn=inputs.context, control=fresh,
                                transformer_options={}, **inputs.extra())
    return run


def count_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters())) if module is not None else 0


# ----------------------------------------------------------------------------------------------- the benchmark

def param_bytes(*modules) -> int:
    return int(sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters()))


def controlnet_control(base, net, args, device):
    """Core ComfyUI ControlNet control of `net` with a full-resolution 3-channel image hint."""
    import comfy.controlnet
    import torch

    cn = comfy.controlnet.ControlNet(net, load_device=device)
    hint = torch.rand(1, 3, args.size * 8, args.size * 8, generator=torch.Generator().manual_seed(3))
    cn.set_cond_hint(hint.to(device))
    cn.pre_run(base, base.model_sampling.percent_to_sigma)
    return cn


def realisid_figures(model, base, inputs: Inputs, args, device) -> dict[str, Callable[[], object]]:
    """(c) RealisID step per K, (d) batched vs sequential local, (e) global per_person vs union, (f) UNet alone."""
    import torch

    from realisid import control as rc

    dtype, ms = model.dtype, base.model_sampling
    x_in = ms.calculate_input(inputs.sigma, inputs.x).to(dtype)
    t = ms.timestep(inputs.sigma).to(dtype)
    y = None if inputs.y is None else inputs.y.to(dtype)
    hw = (args.size, args.size)
    figures = {}
    for k in args.ks:
        faces = make_faces(k, int(model.unet_config["context_dim"]), args.crop_size, args.seed + k)
        ctrl = rc.RealisIDControl(model, faces)
        ctrl.pre_run(base, ms.percent_to_sigma)
        figures[f"realisid_step/{k}"] = step_fn(base, inputs, ctrl)
        if "unet_with_residuals" not in figures:
            with torch.inference_mode():
                residuals = ctrl.get_control(inputs.x, inputs.sigma, inputs.cond, inputs.batched_number, {})
            figures["unet_with_residuals"] = unet_with_residuals_fn(base, inputs, residuals)
        prep = rc.prepare_faces(model, faces, hw, device, dtype)
        singles = [rc.prepare_faces(model, [f], hw, device, dtype) for f in faces]
        figures[f"local_batched/{k}"] = lambda p=prep: rc.local_residuals(model, x_in, t, p, y)
        figures[f"local_sequential/{k}"] = lambda ps=singles: [rc.local_residuals(model, x_in, t, p, y) for p in ps]
        for mode in rc.GLOBAL_MODES:
            figures[f"global_{mode}/{k}"] = lambda p=prep, m=mode: rc.global_residuals(model, x_in, t, p, y, m)
    return figures


def face_analysis(args, progress=None) -> dict:
    """(g) EmbeddedAnalyzer (MTCNN + dlib) on scikit-image's astronaut, after warm-up, on the CPU."""
    import torch

    try:
        import skimage.data

        from realisid.faces.embedded import EmbeddedAnalyzer

        analyzer = EmbeddedAnalyzer()
        image = skimage.data.astronaut()
    except Exception as exc:  # a missing optional backend must not sink the step figures
        log.warning("face analysis skipped: %s", exc)
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    timer = Timer(torch.device("cpu"), max(1, args.warmup), args.repeats)
    figure = timer.measure_all({"face_analysis": lambda: analyzer.analyze(image)}, progress)["face_analysis"]
    figure["faces_found"] = len(analyzer.analyze(image))
    figure["image_size"] = list(image.shape[1::-1])
    return figure


def count_steps(args) -> int:
    figures = 3 + 5 * len(args.ks)  # base, base + ControlNet, UNet alone; per K: step, 2 local, 2 global
    faces = 0 if args.no_faces else 2 + args.repeats
    return figures * (2 + args.repeats) + faces


def group_results(flat: dict[str, dict]) -> dict:
    """'realisid_step/4' -> results['realisid_step']['4']; plain names stay at the top."""
    out: dict = {}
    for name, figure in flat.items():
        group, _, k = name.partition("/")
        if k:
            out.setdefault(group, {})[k] = figure
        else:
            out[group] = figure
    return out


def log_figures(results: dict) -> None:
    for group, value in results.items():
        items = value.items() if "median_s" not in value and "skipped" not in value else [(None, value)]
        for k, f in items:
            label = group if k is None else f"{group}[K={k}]"
            if "skipped" in f:
                log.info("%-28s skipped: %s", label, f["skipped"])
                continue
            log.info("%-28s %9.2f ms   peak %8.1f MiB   working %8.1f MiB", label, f["median_s"] * 1e3,
                     f["peak_bytes"] / 2**20, f["working_bytes"] / 2**20)


# ----------------------------------------------------------------------------------------------- derived figures

def add_footprints(results: dict, weights: dict) -> None:
    """footprint = the weights a figure's models need (exact) + its working memory (measured peak above start):
    what that step would need alone, although all models stay resident during the interleaved run."""
    uses = {"base": ("unet",), "base_controlnet": ("unet", "controlnet"), "realisid_step": ("unet", "realisid")}
    for group, names in uses.items():
        figures = [results[group]] if "median_s" in results[group] else results[group].values()
        for f in figures:
            f["footprint_bytes"] = sum(weights[n] for n in names) + f["working_bytes"]


def derive(results: dict, ks: list[int]) -> dict:
    med = {group: {k: v["median_s"] for k, v in fig.items()} for group, fig in results.items()
           if group in ("realisid_step", "local_batched", "local_sequential", "global_per_person", "global_union")}
    base_cn = results["base_controlnet"]["median_s"]
    unet = results["unet_with_residuals"]["median_s"]
    out = {"sum_of_parts_s": {}, "step_over_parts": {}, "local_batched_over_sequential": {},
           "realisid_over_base_controlnet": {}, "realisid_over_base": {}, "global_union_over_per_person": {},
           "footprint_over_k1": {}, "working_over_k1": {}}
    step_mem = results["realisid_step"]
    k1 = str(min(ks))
    for k in map(str, ks):
        parts = unet + med["global_per_person"][k] + med["local_batched"][k]
        out["sum_of_parts_s"][k] = parts
        out["step_over_parts"][k] = med["realisid_step"][k] / parts
        out["local_batched_over_sequential"][k] = med["local_batched"][k] / med["local_sequential"][k]
        out["realisid_over_base_controlnet"][k] = med["realisid_step"][k] / base_cn
        out["realisid_over_base"][k] = med["realisid_step"][k] / results["base"]["median_s"]
        out["global_union_over_per_person"][k] = med["global_union"][k] / med["global_per_person"][k]
        out["footprint_over_k1"][k] = step_mem[k]["footprint_bytes"] / max(1, step_mem[k1]["footprint_bytes"])
        out["working_over_k1"][k] = step_mem[k]["working_bytes"] / max(1, step_mem[k1]["working_bytes"])
    return out


def targets(derived: dict, ks: list[int], device: str) -> list[dict]:
    """The issue's targets as PASS/MISS with the measured value (reported, never asserted)."""
    ks_s = list(map(str, ks))
    out = []
    worst = max(ks_s, key=lambda k: abs(derived["step_over_parts"][k] - 1.0))
    value = derived["step_over_parts"][worst]
    out.append(dict(id="i", name=f"RealisID step within {TARGETS['parts']:.0%} of the sum of its parts (worst K)",
                    value=value, k=int(worst), threshold=f"abs(x - 1) <= {TARGETS['parts']}",
                    passed=abs(value - 1.0) <= TARGETS["parts"]))
    kk = "4" if "4" in ks_s else ks_s[-1]
    value = derived["local_batched_over_sequential"][kk]
    out.append(dict(id="ii", name=f"batched local pass K={kk} vs {kk} sequential passes", value=value, k=int(kk),
                    threshold=f"<= {TARGETS['local_batched']}", passed=value <= TARGETS["local_batched"],
                    note=None if device == "cuda" else "GPU target; reported only on CPU"))
    k1 = ks_s[0]
    value = derived["realisid_over_base_controlnet"][k1]
    out.append(dict(id="iii", name=f"RealisID step K={k1} vs base + one full-res ControlNet", value=value, k=int(k1),
                    threshold=f"<= {TARGETS['controlnet']}", passed=value <= TARGETS["controlnet"]))
    kmax = ks_s[-1]
    value = derived["footprint_over_k1"][kmax]
    out.append(dict(id="iv", name=f"peak memory (weights + working) K={kmax} vs K={k1}", value=value, k=int(kmax),
                    threshold=f"<= {TARGETS['memory']}", passed=value <= TARGETS["memory"],
                    note=None if device == "cuda" else "CPU: working memory from sampled RSS, approximate; GPU target"))
    return out


# ----------------------------------------------------------------------------------------------- description + output

def machine(args, device) -> dict:
    import psutil

    from realisid.machine import description

    return {**description(device), "ram_bytes": psutil.virtual_memory().total,
            "comfyui": comfyui_version(args.comfyui_dir), "commit": git_commit()}


def comfyui_version(root: str) -> str | None:
    try:
        text = (pathlib.Path(root) / "comfyui_version.py").read_text()
        return text.split("=", 1)[1].strip().strip("\"'")
    except (OSError, IndexError):
        return None


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def markdown(report: dict) -> str:
    cfg, m, r, d = report["config"], report["machine"], report["results"], report["derived"]
    ks = list(map(str, cfg["ks"]))
    mem = cfg["memory_method"]
    lines = [f"# RealisID step cost: {cfg['family'].upper()} {'real-size' if cfg['real_size'] else 'tiny'}, "
             f"{cfg['image_px']} px (latent {cfg['size']}), batch {cfg['batch']}, {cfg['dtype']}, {cfg['device']}",
             "",
             f"Machine: {m['gpu'] or m['cpu']} ({m['cpu_count']} CPUs), torch {m['torch']}, ComfyUI {m['comfyui']}, "
             f"commit {(m['commit'] or '?')[:10]}, {report['created']}. Crop S = {cfg['crop_size']}; medians of "
             f"{cfg['repeats']} repeats after {cfg['warmup']} warm-up. Memory: {mem}.",
             "",
             "| figure | ms | footprint MiB (weights + working) | working MiB |", "| --- | ---: | ---: | ---: |"]
    for name in ("base", "base_controlnet", "unet_with_residuals"):
        f = r[name]
        foot = mib(f["footprint_bytes"]) if "footprint_bytes" in f else "-"
        lines.append(f"| {name} | {ms(f['median_s'])} | {foot} | {mib(f['working_bytes'])} |")
    lines += ["", "| K | RealisID step ms | footprint MiB | local batched ms | local sequential ms | batched/seq | "
                  "global per_person ms | global union ms | sum of parts ms | step/parts | step / base+CN |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k in ks:
        lines.append(
            f"| {k} | {ms(r['realisid_step'][k]['median_s'])} | {mib(r['realisid_step'][k]['footprint_bytes'])} | "
            f"{ms(r['local_batched'][k]['median_s'])} | {ms(r['local_sequential'][k]['median_s'])} | "
            f"{d['local_batched_over_sequential'][k]:.2f} | {ms(r['global_per_person'][k]['median_s'])} | "
            f"{ms(r['global_union'][k]['median_s'])} | {ms(d['sum_of_parts_s'][k])} | {d['step_over_parts'][k]:.3f} | "
            f"{d['realisid_over_base_controlnet'][k]:.2f} |")
    fa = r.get("face_analysis")
    if fa is not None:
        lines += ["", "Face analysis (EmbeddedAnalyzer, astronaut, CPU): " + (
            f"{ms(fa['median_s'])} ms per image ({fa['faces_found']} face(s))" if "median_s" in fa
            else f"skipped ({fa['skipped']})")]
    lines += ["", "| target | value | threshold | result |", "| --- | ---: | --- | --- |"]
    for t in report["targets"]:
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"| ({t['id']}) {t['name']} | {t['value']:.3f} | {t['threshold']} | "
                     f"{'PASS' if t['passed'] else 'MISS'}{note} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, r = report["config"], report["results"]
    ks = cfg["ks"]

    def series(group):
        return [r[group][str(k)]["median_s"] * 1e3 for k in ks]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(ks, series("local_batched"), "o-", label="local: one batched pass")
    left.plot(ks, series("local_sequential"), "s--", label="local: K sequential passes")
    left.plot(ks, series("global_per_person"), "^-", label="global: per_person")
    left.plot(ks, series("global_union"), "v--", label="global: union")
    left.set(title="Branch passes vs K", xlabel="faces K", ylabel="ms")
    right.plot(ks, series("realisid_step"), "o-", label="RealisID step")
    right.axhline(r["base_controlnet"]["median_s"] * 1e3, color="C3", ls="--", label="base + 1 full-res ControlNet")
    right.axhline(r["base"]["median_s"] * 1e3, color="C7", ls=":", label="base UNet")
    right.set(title="One sampler step vs K", xlabel="faces K", ylabel="ms")
    for ax in (left, right):
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    what = f"{cfg['family'].upper()} {'real-size' if cfg['real_size'] else 'tiny'} {cfg['image_px']} px"
    fig.suptitle(f"{what}, batch {cfg['batch']}, {cfg['dtype']}, {report['machine']['gpu'] or report['machine']['cpu']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, out: pathlib.Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {ext: out.with_name(out.name + "." + ext) for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown(report))
    plot(report, paths["png"])
    return paths


def log_targets(report: dict) -> None:
    for t in report["targets"]:
        note = f"  [{t['note']}]" if t.get("note") else ""
        log.info("target (%s) %-58s %s  %.3f (%s)%s", t["id"], t["name"], "PASS" if t["passed"] else "MISS",
                 t["value"], t["threshold"], note)


# ----------------------------------------------------------------------------------------------- main

def build_figures(args, device, dtype, unet_config: dict) -> tuple[dict, dict, dict]:
    """All models (resident together) and the figures to time: name -> callable."""
    log.info("building the %s %s models (%s, %s)", "real-size" if args.real_size else "tiny", args.family,
             args.dtype, args.device)
    base = build_base(args, unet_config, device, dtype)
    inputs = Inputs(base, unet_config, args, device)
    net = build_controlnet(unet_config, device, dtype, args.seed + 1)
    model = build_realisid(unet_config, args.crop_size, device, dtype, args.seed + 2)
    figures = {"base": step_fn(base, inputs),
               "base_controlnet": step_fn(base, inputs, controlnet_control(base, net, args, device))}
    figures.update(realisid_figures(model, base, inputs, args, device))
    params = {"unet": count_params(base.diffusion_model), "controlnet": count_params(net),
              "local_branch": count_params(model.local_net), "global_branch": count_params(model.global_net)}
    weights = {"unet": param_bytes(base.diffusion_model), "controlnet": param_bytes(net),
               "realisid": param_bytes(model.local_net, model.global_net)}
    return figures, params, weights


def run(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    device = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    unet_config = unet_config_for(args)
    started = time.perf_counter()
    figures, params, weights = build_figures(args, device, dtype, unet_config)
    timer = Timer(device, args.warmup, args.repeats)
    with logging_redirect_tqdm(), tqdm(total=count_steps(args), desc="step cost", unit="call") as bar:
        results = group_results(timer.measure_all(figures, bar))
        if not args.no_faces:
            results["face_analysis"] = face_analysis(args, bar)
    add_footprints(results, weights)
    log_figures(results)
    memory = ("torch.cuda.max_memory_allocated over one extra call per figure, reset before it" if args.device == "cuda"
              else "process RSS sampled every 5 ms during one extra call per figure (approximate)")
    config = {"family": args.family, "real_size": args.real_size, "size": args.size, "image_px": args.size * 8,
              "crop_size": args.crop_size, "batch": args.batch, "dtype": args.dtype, "device": args.device,
              "ks": list(args.ks), "repeats": args.repeats, "warmup": args.warmup, "text_tokens": TEXT_TOKENS,
              "id_tokens": ID_TOKENS, "face_side": FACE_SIDE, "params": params, "weight_bytes": weights,
              "unet_config": {k: v for k, v in unet_config.items() if k != "dtype"}, "memory_method": memory,
              "interleaved": True}
    report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(args, device), "config": config, "results": results}
    report["derived"] = derive(results, args.ks)
    report["targets"] = targets(report["derived"], args.ks, args.device)
    report["wall_s"] = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    boot_host(args)
    report = run(args)
    log_targets(report)
    paths = write_outputs(report, pathlib.Path(args.out))
    log.info("wrote %s (%.0f s)", ", ".join(str(p) for p in paths.values()), report["wall_s"])
    return report


if __name__ == "__main__":
    main()
