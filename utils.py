"""What every part shares: seeding and RNG state, CPU memory tuning, determinism, mixed precision and the
convolutions' memory format."""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
from typing import Any

import numpy as np
import torch
import torch.nn as nn

#: --amp choices: the autocast dtype of each (None = full precision)
AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


#: ``ONEDNN_MAX_CPU_ISA`` values that keep oneDNN below its bf16 kernels (AVX512_CORE_BF16 and later)
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_cap_below_bf16() -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` value when it keeps oneDNN from its bf16 kernels, else None."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return cap if cap in ONEDNN_ISAS_WITHOUT_BF16 else None


def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16 flags in ``cpuinfo``) and oneDNN may
    use those units (no ``ONEDNN_MAX_CPU_ISA`` cap below them), where oneDNN's bf16 kernels outrun fp32; False
    where the file is absent (not Linux). Elsewhere oneDNN emulates bf16, many times slower than fp32."""
    if onednn_cap_below_bf16():
        return False
    try:
        text = open(cpuinfo).read()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_emulation_reason(device: torch.device) -> str | None:
    """Why bf16 autocast on ``device`` would be emulated (it runs, but slower than float32), in one line naming
    the missing CPU feature; None where bf16 is native (CUDA with bf16, a CPU with bf16 units)."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(device)} has no bf16 support"
    if device.type != "cpu" or cpu_has_bf16_units():
        return None
    cap = onednn_cap_below_bf16()
    capped = f" (ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN below them)" if cap else ""
    return (f"this CPU has no bf16 units (no avx512_bf16 or amx_bf16 flag){capped}: oneDNN emulates bf16, "
            "many times slower than fp32")


def resolve_amp(amp: str, device: torch.device) -> str:
    """An --amp choice with ``auto`` resolved: bf16 on CUDA devices that support it and on CPUs with bf16 units,
    full precision ("off") elsewhere; other choices unchanged."""
    if amp != "auto":
        return amp
    return "bf16" if device.type in ("cpu", "cuda") and bf16_emulation_reason(device) is None else "off"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op context for full precision."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process heap instead of unmapping it (Linux only;
    returns whether it applied). Glibc serves blocks above 32 MiB with a fresh mmap and returns them to
    the OS when freed, so every CPU training step would page-fault and zero-fill its largest activations
    (SIGA's full-resolution glyph maps) again; the README's Benchmark section has the measured effect.
    The resident memory then stays at its peak between steps instead of shrinking."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy, torch CPU and (on CUDA) the device's generator states, in a form
    ``torch.load(weights_only=True)`` accepts (numpy's key array as a tensor)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                    "position": int(position), "has_gauss": int(has_gauss),
                                                    "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Undo :func:`capture_rng_state`: the generators continue exactly where they were captured."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def configure_determinism(deterministic: bool) -> None:
    """``--deterministic``: deterministic kernels (warnings where CUDA has none, e.g. grid_sample's
    backward) and no cuDNN autotuning; otherwise cuDNN picks the fastest kernels for the fixed input size."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


#: Smallest input width of a strided 1×1 convolution whose NHWC weight gradient oneDNN computes correctly
#: on x86 CPUs: below one 16-channel block (AVX-512; 8 on AVX2) its backward writes past a workspace
#: and crashes or returns wrong gradients (uxlfoundation/oneDNN#6035, torch 2.14's oneDNN).
ONEDNN_NHWC_MIN_CHANNELS = 16
MEMORY_FORMATS = ("auto", "on", "off")


def channels_last_blocker(model: nn.Module) -> str | None:
    """The first convolution that cannot be trained in channels_last on a CPU (see
    ONEDNN_NHWC_MIN_CHANNELS), as a message; None when there is none."""
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
                and module.in_channels < ONEDNN_NHWC_MIN_CHANNELS):
            return (f"{name}: a strided 1x1 convolution with {module.in_channels} < {ONEDNN_NHWC_MIN_CHANNELS} "
                    "input channels, whose channels_last backward oneDNN gets wrong on CPU")
    return None


def use_channels_last(model: nn.Module, mode: str, device: torch.device, training: bool) -> bool:
    """Convert ``model``'s convolution weights to channels_last (NHWC) according to ``mode`` and say
    whether it did; inputs follow the weights' format inside every convolution.

    ``auto`` converts on CPU, where oneDNN runs NHWC convolutions without reordering to its blocked
    layout and back (measured by bench.py: faster training and inference), unless training would hit
    oneDNN's NHWC bug (``channels_last_blocker``); it leaves CUDA in NCHW, not measured here. ``on``
    converts wherever it is correct and raises ValueError otherwise; ``off`` never converts.
    """
    if mode not in MEMORY_FORMATS:
        raise ValueError(f"memory format mode must be one of {MEMORY_FORMATS}, got {mode!r}")
    blocker = channels_last_blocker(model) if training and device.type == "cpu" else None
    if mode == "on" and blocker:
        raise ValueError(f"channels_last cannot train this model on CPU: {blocker}")
    if mode == "off" or blocker or (mode == "auto" and device.type != "cpu"):
        return False
    model.to(memory_format=torch.channels_last)
    return True
