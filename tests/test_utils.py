"""utils.py: the --amp auto resolution from the CPU's flags and oneDNN's ISA cap; bf16 on CPUs without bf16
units (every model's bf16 paths under ``ONEDNN_MAX_CPU_ISA=AVX2``, whatever CPU runs the tests)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import utils
from utils import bf16_emulation_reason, cpu_has_bf16_units, resolve_amp

ROOT = Path(__file__).resolve().parents[1]
CPUINFO = "processor\t: {n}\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\n"


def write_cpuinfo(tmp_path, extra: str) -> str:
    path = tmp_path / f"cpuinfo_{extra or 'none'}"
    path.write_text("".join(CPUINFO.format(n=n, extra=extra) for n in range(2)))
    return str(path)


def test_bf16_units_are_read_from_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu_has_bf16_units(write_cpuinfo(tmp_path, "avx512_bf16"))
    assert cpu_has_bf16_units(write_cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not cpu_has_bf16_units(write_cpuinfo(tmp_path, "avx512_vnni"))
    assert not cpu_has_bf16_units(str(tmp_path / "absent"))


def test_a_onednn_isa_cap_below_bf16_counts_as_no_bf16_units(tmp_path, monkeypatch):
    with_units = write_cpuinfo(tmp_path, "avx512_bf16 amx_bf16")
    for cap in ("AVX2", "avx2", "AVX512_CORE", "AVX512_CORE_VNNI"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert not cpu_has_bf16_units(with_units), cap
    for cap in ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL", ""):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert cpu_has_bf16_units(with_units), cap


def test_the_emulation_reason_names_the_missing_cpu_feature(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(utils, "cpu_has_bf16_units", lambda: True)
    assert bf16_emulation_reason(cpu) is None
    monkeypatch.setattr(utils, "cpu_has_bf16_units", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    reason = bf16_emulation_reason(cpu)
    assert "no bf16 units" in reason and "avx512_bf16" in reason and "amx_bf16" in reason and "\n" not in reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in bf16_emulation_reason(cpu)


def test_auto_amp_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(utils, "cpu_has_bf16_units", lambda: True)
    assert resolve_amp("auto", cpu) == "bf16"
    monkeypatch.setattr(utils, "cpu_has_bf16_units", lambda: False)
    assert resolve_amp("auto", cpu) == "off"
    assert resolve_amp("bf16", cpu) == "bf16" and resolve_amp("off", cpu) == "off"  # explicit choices are kept


# Run in a fresh process: oneDNN reads its ISA cap once, when it starts.
BF16_WITHOUT_UNITS = textwrap.dedent("""
    import argparse, math, torch
    from benchmarking import Workload
    from modules.sequence import cpu_has_bf16_lstm
    from utils import bf16_emulation_reason, resolve_amp

    cpu = torch.device("cpu")
    assert not cpu_has_bf16_lstm()  # oneDNN has no bf16 LSTM below AVX-512
    assert resolve_amp("auto", cpu) == "off" and "ONEDNN_MAX_CPU_ISA=AVX2" in bf16_emulation_reason(cpu)
    args = argparse.Namespace(preset="tiny", batch_size=2, channels_last="auto", label_length=3, decode_steps=4)
    for name in ("TRBA", "SIGA_R", "TSBA", "SIGA_S", "VITBA", "SIGA_T"):
        workload = Workload(name, args, cpu, "bf16")
        losses = [workload.trainer.step(workload.batch, iteration, 1.0) for iteration in range(2)]
        assert all(math.isfinite(float(loss.total)) for loss in losses), name
        logits = workload.infer()
        assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all(), name
        assert all(torch.isfinite(p).all() for p in workload.model.parameters()), name
        print(name, "ok")
""")


def test_every_model_trains_and_reads_in_bf16_on_a_cpu_without_bf16_units():
    """bf16 autocast must run everywhere: oneDNN below AVX-512 has no bf16 LSTM primitive (the LSTMs then run
    in fp32 inside the autocast region); capping oneDNN at AVX2 makes any x86-64 CPU such a CPU."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", BF16_WITHOUT_UNITS], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == [word for name in ("TRBA", "SIGA_R", "TSBA", "SIGA_S", "VITBA", "SIGA_T")
                                     for word in (name, "ok")]
