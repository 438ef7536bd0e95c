"""bench.py and benchmarking.py: a smoke run at tiny sizes (with the onnxruntime row, or the line saying why it is
skipped), the FLOP count it relies on, the ratio arithmetic and the fp32/bf16 agreement count."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import benchmarking
from benchmarking import compare, precisions, siga_overrides
from conftest import make_word_lmdb, run_entry_point, write_tiny_checkpoint
from dataset import Collate, LmdbDataset
from evaluation import benchmark_normalize
from onnx_export import missing_onnx_packages
from utils import bf16_emulation_reason

ROOT = Path(__file__).resolve().parents[1]


def test_bench_compare_smoke_run_writes_results_and_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--compare", "--preset", "tiny", "--device", "cpu",
                             "--repeats", "1", "--warmup", "1", "--batch_size", "4", "--json", str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    emulated = bf16_emulation_reason(torch.device("cpu"))  # default precisions: bf16 only where it is native
    precisions = ["fp32"] if emulated else ["fp32", "bf16"]
    assert {(r["model"], r["dtype"]) for r in report["results"]} == {(m, p) for m in ("TRBA", "SIGA_R")
                                                                   for p in precisions}
    assert report["skipped_rows"] == ({"cpu/bf16": emulated} if emulated else {})
    assert (f"cpu/bf16 rows skipped: {emulated}" in result.stdout) == bool(emulated)
    for row in report["results"]:
        assert row["train_images_per_second"] > 0 and row["infer_images_per_second"] > 0 and row["latency_ms"] > 0
        assert row["infer_gflops_per_image"] > 0 and row["infer_achieved_gflops"] > 0
    ratios = report["ratios"]["SIGA_R"]["cpu/fp32"]
    assert set(ratios) == {"train", "infer", "latency"} and all(v > 0 for v in ratios.values())
    assert report["matmul_gflops"]["cpu/fp32"] > 0
    assert "SIGA_R / TRBA time (cpu/fp32)" in result.stdout
    if missing_onnx_packages():  # CI installs requirements-onnx.txt; without it bench.py says what it skips
        assert "onnxruntime row skipped: " in result.stdout and "skipped" in report["onnxruntime"]
    else:  # beside PyTorch's cpu/fp32 rows only: onnxruntime runs the fp32 graph on the CPU
        for row in report["results"]:
            measured = [row["onnxruntime_images_per_second"], row["onnxruntime_latency_ms"]]
            assert all(v > 0 for v in measured) if row["dtype"] == "fp32" else measured == [None, None]
        assert "beside PyTorch on the CPU" in result.stdout and "SIGA_R   onnxruntime" in result.stdout


def test_default_precisions_leave_out_emulated_bf16_and_say_why(monkeypatch):
    cpu, skipped = torch.device("cpu"), {}
    monkeypatch.setattr(benchmarking, "bf16_emulation_reason", lambda device: None)
    assert precisions(None, cpu, skipped) == ["fp32", "bf16"] and skipped == {}
    monkeypatch.setattr(benchmarking, "bf16_emulation_reason", lambda device: "no bf16 units")
    assert precisions(None, cpu, skipped) == ["fp32"] and skipped == {"cpu/bf16": "no bf16 units"}
    skipped.clear()
    assert precisions(["fp32", "bf16"], cpu, skipped) == ["fp32", "bf16"] and skipped == {}  # as asked


def test_bench_says_in_one_line_why_it_skips_the_onnxruntime_row(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails as if not installed
    out = tmp_path / "bench.json"
    code, stdout, err = run_entry_point("bench.py", "--models", "TRBA", "--preset", "tiny", "--device", "cpu",
                                        "--dtypes", "fp32", "--repeats", "1", "--warmup", "1", "--batch_size", "2",
                                        "--json", out)
    assert code == 0, err[-3000:]
    expected = "onnxruntime row skipped: onnxruntime not installed (pip install -r requirements-onnx.txt)"
    assert [line for line in stdout.splitlines() if "onnxruntime" in line] == [expected]
    report = json.loads(out.read_text())
    assert report["onnxruntime"] == {"skipped": expected.removeprefix("onnxruntime row skipped: ")}
    assert report["results"][0]["onnxruntime_images_per_second"] is None


def test_siga_r_is_timed_as_its_preset_trains_it():
    """The demo trains SIGA_R after a TPS stage: bench times it with the TPS frozen; the paper preset only with
    --two_stage; baselines train their own TPS."""
    def overrides(name, preset, **flags):
        return siga_overrides(name, argparse.Namespace(preset=preset, **flags))
    assert overrides("SIGA_R", "demo") == {"freeze_tps": True} and overrides("TRBA", "demo") == {}
    assert overrides("SIGA_R", "paper") == {} and overrides("SIGA_R", "paper", two_stage=True) == {"freeze_tps": True}
    assert overrides("SIGA_R", "paper", seg_resolution="half") == {"seg_resolution": "half"}


def test_compare_gives_siga_over_trba_time():
    rows = [{"model": "TRBA", "device": "cpu", "dtype": "fp32", "train_images_per_second": 100.0,
             "infer_images_per_second": 400.0, "latency_ms": 10.0},
            {"model": "SIGA_R", "device": "cpu", "dtype": "fp32", "train_images_per_second": 80.0,
             "infer_images_per_second": 200.0, "latency_ms": 12.0}]
    assert compare(rows) == {"cpu/fp32": {"train": 1.25, "infer": 2.0, "latency": 1.2}}
    svtr_rows = [dict(row, model={"TRBA": "TSBA", "SIGA_R": "SIGA_S"}[row["model"]]) for row in rows]
    assert compare(rows, "SIGA_S") == {} and compare(svtr_rows, "SIGA_S") == compare(rows)


def test_agreement_counts_identical_fp32_and_bf16_predictions(tmp_path):
    model, tokenizer, config = write_tiny_checkpoint(tmp_path / "tiny.pth", "SIGA_R")
    words = ["hello", "world", "street", "coffee", "exit", "london", "open", "hotel", "bank", "taxi", "river", "north"]

    def predictions(path: Path) -> tuple[dict[torch.dtype, list[str]], list[float]]:
        """The independent count: both precisions over the same batches as bench.py's."""
        loader = DataLoader(LmdbDataset(path, tokenizer, (config.img_h, config.img_w), "test"), batch_size=5,
                            collate_fn=Collate())
        texts, confidences = {torch.float32: [], torch.bfloat16: []}, {torch.float32: [], torch.bfloat16: []}
        with torch.inference_mode():
            for dtype, found in texts.items():
                for batch in loader:
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                        read, confidence = tokenizer.decode(model(batch.images).logits)
                    found += read
                    confidences[dtype] += confidence
        return texts, confidences[torch.float32]

    # label every other image with the model's own fp32 reading, so that some predictions are correct
    first = predictions(make_word_lmdb(tmp_path / "scratch", words))[0][torch.float32]
    labels = [p if i % 2 == 0 and p else w for i, (p, w) in enumerate(zip(first, words))]
    make_word_lmdb(tmp_path / "lmdb", words, labels=labels)
    out = tmp_path / "agreement.json"
    code, _, err = run_entry_point("bench.py", "--agreement", tmp_path / "tiny.pth", "--eval_data", tmp_path / "lmdb",
                                   "--device", "cpu", "--batch_size", "5", "--workers", "0", "--channels_last", "off",
                                   "--json", out)  # the reference above runs in NCHW
    assert code == 0, err
    report = json.loads(out.read_text())
    texts, confidence = predictions(tmp_path / "lmdb")
    same = [a == b for a, b in zip(texts[torch.float32], texts[torch.bfloat16])]
    correct = [benchmark_normalize(p) == benchmark_normalize(w) for p, w in zip(texts[torch.float32], labels)]
    assert sum(correct) >= 1
    assert report["samples"] == len(words) and report["identical"] == sum(same)
    assert report["identical_percent"] == 100.0 * sum(same) / len(words)
    assert report["identical_percent_where_fp32_correct"] == 100.0 * sum(s for s, c in zip(same, correct) if c) / sum(correct)
    assert report["accuracy_fp32"] == 100.0 * sum(correct) / len(words)
    changed = [c for c, s in zip(confidence, same) if not s]
    assert report["changed_max_fp32_confidence"] == pytest.approx(max(changed) if changed else None)


def test_agreement_needs_eval_data():
    code, _, err = run_entry_point("bench.py", "--agreement", "model.pth")
    assert code == 2
    assert "--agreement needs --eval_data" in err


@pytest.mark.parametrize("comparison, baseline, model", [("S", "TSBA", "SIGA_S"), ("T", "VITBA", "SIGA_T")])
def test_bench_compare_svtr_and_vit_smoke_run(tmp_path, comparison, baseline, model):
    """``--compare S`` / ``T``: each SIGA model and its baseline at its own input size, with the time ratios."""
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--compare", comparison, "--preset", "tiny",
                             "--device", "cpu", "--dtypes", "fp32", "--repeats", "1", "--warmup", "1", "--batch_size",
                             "2", "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["model"] for r in report["results"]] == [baseline, model]
    assert set(report["ratios"]) == {model} and all(v > 0 for v in report["ratios"][model]["cpu/fp32"].values())
    assert all(r["infer_gflops_per_image"] > 0 for r in report["results"])
    assert f"{model} / {baseline} time (cpu/fp32)" in result.stdout
