"""The machine a benchmark runs on: CPU and GPU facts, peak FLOP/s, a one-line label.

* `machine_info`: CPU model, cores, clock, SIMD flags, memory, GPUs, library
  versions and load average (the document's ``machine`` block);
* `machine_label`: the one line every figure carries;
* `device_peak`: the peak FP32 (or TF32) FLOP/s of the device training runs
  on, and how it was obtained: for a CPU from the flags of /proc/cpuinfo
  (`cpu_flops_per_cycle`), for a GPU from the data sheets (`GPU_PEAKS`).

TensorFlow is imported only to list GPUs, so spawned workers that import
this package stay light.
"""

from __future__ import annotations

import os
import platform
from typing import Iterable

import numpy as np

from mat_effnet.common.errors import MatEffNetError


def parse_cpuinfo(text: str) -> dict:
    """The fields of the first processor block of /proc/cpuinfo, plus every ``cpu MHz``.

    Returns ``{"model", "vendor", "family", "model_number", "flags" (set),
    "mhz" (list of floats, one per processor)}``; missing fields are None.
    """
    first: dict[str, str] = {}
    mhz = []
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        if "cpu MHz" in fields:
            try:
                mhz.append(float(fields["cpu MHz"]))
            except ValueError:
                pass
        if not first and fields:
            first = fields

    def as_int(key):
        try:
            return int(first[key], 0)
        except (KeyError, ValueError):
            return None

    flags = first.get("flags") or first.get("Features") or ""
    return {"model": first.get("model name") or first.get("Processor") or first.get("cpu model"),
            "vendor": first.get("vendor_id"), "family": as_int("cpu family"),
            "model_number": as_int("model"), "flags": set(flags.split()), "mhz": mhz}


def cpu_flops_per_cycle(flags: Iterable[str], vendor: str | None = None,
                        family: int | None = None, model: int | None = None) -> tuple[int, str]:
    """Peak FP32 FLOPs per cycle per core from the CPU flags; returns (value, how).

    Rule: lanes of the widest FMA datapath x 2 (an FMA is 2 FLOPs) x 2 FMA
    pipes per core (every recent x86 server core has two; a few low-end
    Xeons have only one 512-bit pipe, which flags cannot show):

    * ``avx512f``: 16 lanes -> 64; except AMD Zen 4 (family 0x19), which
      runs 512-bit instructions on 256-bit pipes -> 32;
    * ``avx2`` + ``fma``: 8 lanes -> 32; except AMD Zen/Zen+ (family 0x17,
      model < 0x30), whose FMA pipes are 128 bits -> 16;
    * ``avx`` without FMA: one 8-lane multiply + one 8-lane add -> 16;
    * ``sse2``: 4-lane multiply + add -> 8; anything else 2 (scalar mul + add).
    """
    flags = set(flags)
    amd = (vendor or "").lower() == "authenticamd"
    if "avx512f" in flags:
        if amd and family == 0x19:
            return 32, "avx512f on AMD Zen 4 (512-bit ops on 2 x 256-bit FMA pipes): 8 lanes x 2 FLOPs x 2 pipes"
        return 64, "avx512f: 16 FP32 lanes x 2 FLOPs (FMA) x 2 FMA pipes"
    if "avx2" in flags and "fma" in flags:
        if amd and family == 0x17 and model is not None and model < 0x30:
            return 16, "avx2+fma on AMD Zen/Zen+ (128-bit FMA pipes): 4 lanes x 2 FLOPs x 2 pipes"
        return 32, "avx2+fma: 8 FP32 lanes x 2 FLOPs (FMA) x 2 FMA pipes"
    if "avx" in flags:
        return 16, "avx (no FMA): 8-lane multiply + 8-lane add per cycle"
    if "sse2" in flags:
        return 8, "sse2: 4-lane multiply + 4-lane add per cycle"
    return 2, "no SIMD flags recognised: scalar multiply + add per cycle"


def cpu_peak_flops(cores: int, clock_hz: float, flops_per_cycle: float) -> float:
    """cores x clock x FLOPs per cycle."""
    if cores < 1 or clock_hz <= 0 or flops_per_cycle <= 0:
        raise MatEffNetError(f"cores, clock_hz, flops_per_cycle: need >= 1, > 0, > 0; got "
                             f"{cores}, {clock_hz}, {flops_per_cycle}")
    return float(cores) * float(clock_hz) * float(flops_per_cycle)


# Dense (no sparsity) peaks from NVIDIA's data sheets, in FLOP/s: FP32 on the
# CUDA cores and, where the card has them, TF32 tensor cores (what TensorFlow
# uses for float32 matmuls/convolutions on Ampere and newer by default) and
# BF16 tensor cores (mixed_bfloat16; `mat_effnet.benchmark.device`). A card
# without a "bf16" entry has no figure here, not zero.
# More specific names first.
GPU_PEAKS = (
    ("H200", {"fp32": 67.0e12, "tf32": 494.7e12, "bf16": 989.4e12}),
    ("H100 PCIe", {"fp32": 51.2e12, "tf32": 378.0e12, "bf16": 756.5e12}),
    ("H100 NVL", {"fp32": 60.0e12, "tf32": 417.5e12, "bf16": 835.5e12}),
    ("H100", {"fp32": 67.0e12, "tf32": 494.7e12, "bf16": 989.4e12}),  # SXM ("H100 80GB HBM3")
    ("GH200", {"fp32": 67.0e12, "tf32": 494.7e12, "bf16": 989.4e12}),
    ("A100", {"fp32": 19.5e12, "tf32": 156.0e12, "bf16": 312.0e12}),
    ("A10G", {"fp32": 31.2e12, "tf32": 62.5e12}),
    ("A10", {"fp32": 31.2e12, "tf32": 62.5e12}),
    ("L40S", {"fp32": 91.6e12, "tf32": 183.0e12, "bf16": 362.1e12}),
    ("L4", {"fp32": 30.3e12, "tf32": 60.0e12, "bf16": 121.0e12}),
    ("V100", {"fp32": 15.7e12}),
    ("T4", {"fp32": 8.1e12}),
    ("RTX 4090", {"fp32": 82.6e12, "tf32": 82.6e12}),
    ("RTX 3090", {"fp32": 35.6e12, "tf32": 35.6e12}),
)


def gpu_peak_flops(name: str) -> dict | None:
    """``{"fp32": FLOP/s, "tf32": FLOP/s (if any), "matched": key}`` for a GPU name, or None."""
    for key, peaks in GPU_PEAKS:
        if key.lower() in (name or "").lower():
            return dict(peaks, matched=key)
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _gpus() -> list[dict]:
    """Name and compute capability of every GPU TensorFlow sees (TF imported here)."""
    import tensorflow as tf

    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001 -- details are optional
            details = {}
        out.append({"device": gpu.name, "name": details.get("device_name", gpu.name),
                    "compute_capability": details.get("compute_capability")})
    return out


def machine_info(with_gpus: bool = True) -> dict:
    """CPU model and cores, clock, SIMD flags, memory, GPUs, library versions, load."""
    import cv2
    import psutil

    cpu = parse_cpuinfo(_read("/proc/cpuinfo"))
    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = logical
    freq = psutil.cpu_freq()
    if freq is not None and freq.max and freq.max > 0:
        clock_mhz, clock_source = float(freq.max), "psutil.cpu_freq().max"
    elif cpu["mhz"]:
        clock_mhz, clock_source = max(cpu["mhz"]), "/proc/cpuinfo 'cpu MHz' (no cpufreq: the nominal clock a VM reports)"
    elif freq is not None and freq.current:
        clock_mhz, clock_source = float(freq.current), "psutil.cpu_freq().current"
    else:
        clock_mhz, clock_source = None, "unknown"
    simd = sorted(f for f in cpu["flags"] if f in {"sse2", "avx", "avx2", "fma", "avx512f",
                                                   "avx512_bf16", "avx512_vnni", "amx_bf16"})
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "opencv": cv2.__version__}
    gpus: list = []
    if with_gpus:
        import keras
        import tensorflow as tf

        versions.update(tensorflow=tf.__version__, keras=keras.__version__)
        gpus = _gpus()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_model": cpu["model"] or platform.processor() or platform.machine(),
        "cpu_vendor": cpu["vendor"], "cpu_family": cpu["family"], "cpu_model_number": cpu["model_number"],
        "logical_cpus": logical, "physical_cores": physical, "usable_cpus": usable,
        "cores_for_peak": max(1, min(physical, usable)),
        "clock_mhz": clock_mhz, "clock_source": clock_source, "simd_flags": simd,
        "cpu_flags": sorted(cpu["flags"]),
        "memory_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "gpus": gpus, "versions": versions, "platform": platform.platform(),
        "load_average_1_5_15": load,
    }


def machine_label(info: dict) -> str:
    """A one-line description of `machine_info` for each figure."""
    gpu = ", ".join(g["name"] for g in info.get("gpus") or []) or "no GPU"
    return (f"{info.get('cpu_model')} ({info.get('cores_for_peak')} cores, "
            f"{info.get('logical_cpus')} logical CPUs) / {gpu}")


def device_peak(info: dict) -> dict:
    """The peak FLOP/s of the device training runs on, and how it was obtained.

    GPU (the first one): `gpu_peak_flops` by name; ``flops`` is the TF32
    tensor-core peak when TensorFlow runs float32 in TF32 (its default on
    Ampere and newer) and the table has one, else the FP32 peak.  CPU:
    `cpu_peak_flops` of the usable physical cores, the clock and
    `cpu_flops_per_cycle`.  ``flops`` is None when unknown.
    """
    gpus = info.get("gpus") or []
    if gpus:
        name = gpus[0]["name"]
        peaks = gpu_peak_flops(name)
        if peaks is None:
            return {"device": name, "flops": None, "how": f"GPU {name!r} not in the table"}
        tf32 = False
        try:
            import tensorflow as tf

            tf32 = bool(tf.config.experimental.tensor_float_32_execution_enabled())
        except Exception:  # noqa: BLE001
            pass
        cc = gpus[0].get("compute_capability") or (0, 0)
        use_tf32 = tf32 and "tf32" in peaks and tuple(cc) >= (8, 0)
        precision = "tf32" if use_tf32 else "fp32"
        return {"device": name, "flops": peaks[precision], "precision": precision,
                "fp32_flops": peaks["fp32"], "tf32_flops": peaks.get("tf32"),
                "how": f"data-sheet dense {precision.upper()} peak of {peaks['matched']} "
                       "(mat_effnet.benchmark.machine.GPU_PEAKS)"}
    per_cycle, why = cpu_flops_per_cycle(info.get("cpu_flags", ()), info.get("cpu_vendor"),
                                         info.get("cpu_family"), info.get("cpu_model_number"))
    cores, mhz = info.get("cores_for_peak") or 1, info.get("clock_mhz")
    if not mhz:
        return {"device": info.get("cpu_model"), "flops": None, "how": "CPU clock unknown"}
    return {"device": info.get("cpu_model"), "precision": "fp32",
            "flops": cpu_peak_flops(cores, mhz * 1e6, per_cycle),
            "cores": cores, "clock_mhz": mhz, "flops_per_cycle": per_cycle,
            "how": f"{cores} cores x {mhz:.0f} MHz ({info.get('clock_source')}) x "
                   f"{per_cycle} FP32 FLOPs/cycle ({why}, from /proc/cpuinfo flags)"}
