"""What InstantID's regional attention costs per UNet call, with its device copies cached and without (issue 16).

Runs the 70 attn2 replacements of an SDXL UNet (real widths, `fake_instantid.attn2_hidden_sizes`) on random
queries, as ONE UNet call does, for K faces. "cached" is the shipped path: the K/V, null K/V, masks and identity
rows are copied to the device once. "uncached" clears the K/V and row caches before every layer call, which is what
every call did before (4 K/V copies and one row copy per layer; the masks were cached already). Both are timed interleaved in one process; copies are
counted through Tensor.to. The UNet's own attention is not included: this is the patch's overhead alone.

    python benchmarks/instantid_attention.py --dtype bf16 --size 32 --faces 1 4     # CPU (fp32 on CPU copies nothing)
    python benchmarks/instantid_attention.py --device cuda --dtype fp16 --size 128
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger("instantid_attention")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
ID_TOKENS = 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--size", type=int, default=32, help="latent side (128 = 1024 px)")
    p.add_argument("--batch", type=int, default=2, help="latent batch (2 = cond + uncond)")
    p.add_argument("--faces", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR"))
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def boot(args) -> None:
    for path in (str(REPO), str(REPO / "benchmarks")):
        if path not in sys.path:
            sys.path.insert(0, path)
    from realisid.host import comfy_host
    from tests.helpers import host

    comfy_host.boot(args.comfyui_dir or str(host.comfyui_dir()), cpu=args.device == "cpu")


def layers(k: int, seed: int = 0):
    """[(RegionalIPAttention, width, level)] for the 70 SDXL cross-attentions, K faces side by side."""
    import torch
    from real_shapes import REAL_UNET

    from realisid import geometry
    from realisid.instantid.attention import RegionalIPAttention
    from tests.helpers import fake_instantid as fi

    down = (3, 2, 1)
    levels = [geometry.Level(), geometry.Level((down,)), geometry.Level((down, down))]
    level_of = {640: levels[1], 1280: levels[2]}  # SDXL: 640-wide attention at 1/2, 1280-wide at 1/4
    gen = torch.Generator().manual_seed(seed)
    boxes = [(i / k, 0.25, (i + 1) / k, 0.75) for i in range(k)]
    out = []
    for width in fi.attn2_hidden_sizes(REAL_UNET["sdxl"]):
        kv = [torch.randn(n, ID_TOKENS, width, generator=gen) for n in (k, k, 1, 1)]
        out.append((RegionalIPAttention(*kv, boxes, 0.8, (1e9, 0.0), levels), width, level_of[width]))
    return out


def one_unet_call(patches, inputs, extras, uncached: bool) -> None:
    for (fn, _, _), q, extra in zip(patches, inputs, extras, strict=True):
        if uncached:  # the device copies the pre-cache code made per call; masks were already cached then
            fn._kv_key, fn._kv, fn._rows = None, None, {}
        fn.ip_term(q, extra)


def count_copies(run) -> int:
    import torch

    original, copies = torch.Tensor.to, [0]

    def counting(tensor, *a, **kw):
        result = original(tensor, *a, **kw)
        copies[0] += result is not tensor
        return result

    torch.Tensor.to = counting
    try:
        run()
    finally:
        torch.Tensor.to = original
    return copies[0]


def measure(args, k: int) -> dict:
    import torch

    device, dtype = torch.device(args.device), getattr(torch, DTYPES[args.dtype])
    patches = layers(k)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(args.batch, level.size(args.size) ** 2, width, generator=gen).to(device, dtype)
              for _, width, level in patches]
    chunks = [0, 1] if args.batch % 2 == 0 else [0]
    extras = [{"n_heads": width // 64, "original_shape": [args.batch, 4, args.size, args.size],
               "cond_or_uncond": chunks} for _, width, _ in patches]  # SDXL: 64-channel heads
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {"cached": [], "uncached": []}
    one_unet_call(patches, inputs, extras, uncached=False)  # warm-up (fills the caches)
    for _ in range(args.repeats):
        for mode in times:
            sync()
            start = time.perf_counter()
            one_unet_call(patches, inputs, extras, uncached=mode == "uncached")
            sync()
            times[mode].append(time.perf_counter() - start)
    copies = {mode: count_copies(lambda m=mode: one_unet_call(patches, inputs, extras, m == "uncached"))
              for mode in times}
    return {mode: {"median_s": statistics.median(t), "times_s": t, "copies_per_unet_call": copies[mode]}
            for mode, t in times.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    boot(args)
    results = {str(k): measure(args, k) for k in args.faces}
    for k, fig in results.items():
        log.info("K=%s: cached %.2f ms (%d copies), uncached %.2f ms (%d copies) per UNet call", k,
                 fig["cached"]["median_s"] * 1e3, fig["cached"]["copies_per_unet_call"],
                 fig["uncached"]["median_s"] * 1e3, fig["uncached"]["copies_per_unet_call"])
    import torch

    from realisid.machine import description

    report = {"machine": description(torch.device(args.device)), "results": results,
              "config": {k: v for k, v in vars(args).items() if k != "comfyui_dir"}}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
