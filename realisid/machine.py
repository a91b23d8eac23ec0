"""The machine a training or a benchmark ran on: one description for model cards, training records and every
benchmark's results (each adds only what is its own, e.g. OpenCV's threads)."""

from __future__ import annotations

import os
import pathlib
import platform

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def description(device: torch.device | None = None) -> dict:
    """CPU, cores (and how many this process may use), torch and its threads, the GPU when `device` is one."""
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": None, "cuda": torch.version.cuda,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return info


def machine() -> str:
    """One line of `description` (model cards, training records): architecture, cores, torch threads, device."""
    info = description(torch.device("cuda", 0) if torch.cuda.is_available() else None)
    return (f"{platform.processor() or platform.machine()}, {info['cpu_count']} cores, {info['torch_threads']} "
            f"torch threads, {info['gpu'] or 'CPU'}")
