"""utils.py: the --amp auto resolution from the CPU's flags."""
from __future__ import annotations

import torch

import utils
from utils import cpu_has_bf16_units, resolve_amp

CPUINFO = "processor\t: {n}\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\n"


def write_cpuinfo(tmp_path, extra: str) -> str:
    path = tmp_path / f"cpuinfo_{extra or 'none'}"
    path.write_text("".join(CPUINFO.format(n=n, extra=extra) for n in range(2)))
    return str(path)


def test_bf16_units_are_read_from_the_cpu_flags(tmp_path):
    assert cpu_has_bf16_units(write_cpuinfo(tmp_path, "avx512_bf16"))
    assert cpu_has_bf16_units(write_cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not cpu_has_bf16_units(write_cpuinfo(tmp_path, "avx512_vnni"))
    assert not cpu_has_bf16_units(str(tmp_path / "absent"))


def test_auto_amp_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(utils, "cpu_has_bf16_units", lambda: True)
    assert resolve_amp("auto", cpu) == "bf16"
    monkeypatch.setattr(utils, "cpu_has_bf16_units", lambda: False)
    assert resolve_amp("auto", cpu) == "off"
    assert resolve_amp("bf16", cpu) == "bf16" and resolve_amp("off", cpu) == "off"  # explicit choices are kept
