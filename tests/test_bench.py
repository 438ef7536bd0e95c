"""bench.py: a smoke run at tiny sizes, the FLOP count it relies on, and the ratio arithmetic."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import bench

ROOT = Path(__file__).resolve().parents[1]


def test_bench_compare_smoke_run_writes_results_and_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--compare", "--preset", "tiny", "--device", "cpu",
                             "--repeats", "1", "--warmup", "1", "--batch_size", "4", "--json", str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {(r["model"], r["dtype"]) for r in report["results"]} == {("TRBA", "fp32"), ("SIGA_R", "fp32"),
                                                                   ("TRBA", "bf16"), ("SIGA_R", "bf16")}
    for row in report["results"]:
        assert row["train_images_per_second"] > 0 and row["infer_images_per_second"] > 0 and row["latency_ms"] > 0
        assert row["infer_gflops_per_image"] > 0 and row["infer_achieved_gflops"] > 0
    assert set(report["ratios"]) == {"train", "infer", "latency"} and all(v > 0 for v in report["ratios"].values())
    assert report["matmul_gflops"]["cpu/fp32"] > 0
    assert "SIGA_R / TRBA time (cpu/fp32)" in result.stdout


def test_forward_flops_counts_convolutions_linears_and_lstms():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(2))
    conv = bench.forward_flops(model, lambda: model(torch.randn(2, 3, 4, 5)))
    assert conv == 2 * (2 * 4 * 5) * 8 * 3 * 9  # multiply-adds of every output pixel
    lstm = torch.nn.LSTM(16, 8, bidirectional=True, batch_first=True)
    flops = bench.forward_flops(lstm, lambda: lstm(torch.randn(3, 5, 16)))
    assert flops == 2 * 3 * 5 * 2 * 4 * 8 * (16 + 8)  # 2·B·T·directions·4H(I+H)


def test_compare_gives_siga_over_trba_time():
    rows = [{"model": "TRBA", "device": "cpu", "dtype": "fp32", "train_images_per_second": 100.0,
             "infer_images_per_second": 400.0, "latency_ms": 10.0},
            {"model": "SIGA_R", "device": "cpu", "dtype": "fp32", "train_images_per_second": 80.0,
             "infer_images_per_second": 200.0, "latency_ms": 12.0}]
    assert bench.compare(rows) == {"cpu/fp32": {"train": 1.25, "infer": 2.0, "latency": 1.2}}
