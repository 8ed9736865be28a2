"""What a number was measured on: thread count, CPU, library versions.

Float results depend on the intra-op thread count and on the CPU's kernels (issue 17:
the same demo gave different tables on two machines, identical tables on one machine
busy or quiet), so every run records this beside its results, and `ckl show` and the
report print it. Runs are bitwise deterministic for one seed, machine and thread count.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy")


def _cpu() -> tuple[str, list[str]]:
    """(model name, SIMD flags that change float kernels) from /proc/cpuinfo, where there is one."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return platform.processor() or platform.machine(), []
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), platform.machine())
    flags_line = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    wanted = ("avx", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma", "f16c", "sve", "asimd", "neon")
    return name, sorted(f for f in flags_line.split() if f in wanted)


def environment() -> dict:
    """This process's thread count, CPU, accelerator and library versions (JSON-able)."""
    import torch

    cpu, flags = _cpu()
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "cpu_flags": flags,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def describe(env: dict) -> str:
    """One line: "2 threads, torch 2.13.0, transformers 5.0, on Intel(R) Xeon(R) ... (avx2, fma)"."""
    libs = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v and k in ("torch", "transformers"))
    where = env.get("cuda") or env.get("cpu", "?")
    flags = f" ({', '.join(env['cpu_flags'])})" if env.get("cpu_flags") else ""
    return f"{env.get('torch_threads')} thread(s), {libs}, on {where}{flags}"
