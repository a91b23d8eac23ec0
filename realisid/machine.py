"""One line naming the machine a training ran on, for model cards and training records."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch threads, {device}"
