"""tools/create_lmdb_dataset.py: building an LMDB from a folder + ground truth, and checking LMDBs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import encode_image, make_word_lmdb, raw_entries, render_word
from dataset import LmdbDataset, Sample
from lmdb_io import LmdbWriter
from tokenizer import Tokenizer, load_charset
from tools import create_lmdb_dataset
from tools.create_lmdb_dataset import parse_gt_line, read_gt

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = Tokenizer(load_charset("36"), max_label_length=25)


def run_script(*args) -> subprocess.CompletedProcess:
    """The tool as documented, ``python -m tools.create_lmdb_dataset`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "tools.create_lmdb_dataset", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def run_tool(capsys):
    """The tool's main() in this process (faster than a subprocess), with its exit code and output."""

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = create_lmdb_dataset.main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["create_lmdb_dataset", *map(str, args)], code, out, err)

    return run



@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    render_word("hello").save(folder / "a.png")
    render_word("new york", (140, 32)).save(folder / "sub" / "b.png")
    render_word("world").save(folder / "c 1.png")  # a space in the file name: only valid in the tab format
    render_word("space").save(folder / "d.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    gt = tmp_path / "gt.txt"
    gt.write_text(
        "a.png\thello\n"           # 1 tab format
        "sub/b.png\tNew York\n"    # 2 label with a space after the tab
        "\n"                       # 3 blank: ignored
        "c 1.png\tworld\n"         # 4 path with a space, tab-separated
        "d.png space\n"            # 5 space format
        "missing.png\tgone\n"      # 6 image missing
        "corrupt.png\tbroken\n"    # 7 undecodable image
        "no_separator_here\n",     # 8 malformed
        encoding="utf-8")
    return folder, gt


def test_parse_gt_line():
    assert parse_gt_line("x.png\tNew York") == ("x.png", "New York")
    assert parse_gt_line("dir/x.png label with spaces") == ("dir/x.png", "label with spaces")
    assert parse_gt_line("my file.png\tlabel") == ("my file.png", "label")  # the tab wins over spaces
    for bad in ("nothing", "x.png\t", "\tlabel"):
        with pytest.raises(ValueError):
            parse_gt_line(bad)


def test_read_gt_reports_line_numbers(image_folder):
    entries, malformed = read_gt(image_folder[1])
    assert [(e.line_no, e.path, e.label) for e in entries][:3] == [(1, "a.png", "hello"), (2, "sub/b.png", "New York"),
                                                                   (4, "c 1.png", "world")]
    assert [(line_no, text) for line_no, _, text in malformed] == [(8, "no_separator_here")]


def test_round_trip(image_folder, tmp_path):
    folder, gt = image_folder
    out = tmp_path / "lmdb"
    result = run_script("--input_dir", folder, "--gt_file", gt, "--output", out)
    assert result.returncode == 0, result.stderr
    report = result.stdout
    assert "written 4 sample(s)" in report and "skipped 3" in report
    assert "missing.png" in report and "missing file" in report
    assert "corrupt.png" in report and "undecodable image" in report
    assert f"{gt}:8: malformed line" in report and "no_separator_here" in report

    entries = raw_entries(out)
    assert entries[b"num-samples"] == b"4"
    assert [entries[b"label-%09d" % i].decode() for i in range(1, 5)] == ["hello", "New York", "world", "space"]
    assert entries[b"image-000000002"] == (folder / "sub" / "b.png").read_bytes()  # bytes stored unchanged
    assert b"image-000000005" not in entries

    dataset = LmdbDataset(out, TOKENIZER, (32, 100), mode="test")
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(isinstance(s, Sample) and s.image.shape == (32, 100, 3) for s in samples)
    assert [s.label for s in samples] == ["hello", "newyork", "world", "space"]

    check = run_script("--check", out)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK" in check.stdout and "num-samples=4" in check.stdout


def test_without_validation_the_corrupt_image_is_written_and_check_finds_it(image_folder, tmp_path, run_tool):
    folder, gt = image_folder
    out = tmp_path / "unchecked"
    result = run_tool("--input_dir", folder, "--gt_file", gt, "--output", out, "--no-check_valid")
    assert result.returncode == 0, result.stderr
    assert "written 5 sample(s)" in result.stdout
    check = run_tool("--check", out)
    assert check.returncode != 0
    assert "index 5: undecodable image" in check.stdout

    again = run_tool("--input_dir", folder, "--gt_file", gt, "--output", out)
    assert again.returncode != 0 and "already exists" in again.stderr  # never silently mixed with old keys
    replaced = run_tool("--input_dir", folder, "--gt_file", gt, "--output", out, "--overwrite")
    assert replaced.returncode == 0 and raw_entries(out)[b"num-samples"] == b"4"
    assert b"image-000000005" not in raw_entries(out)


def test_check_fails_on_corrupt_image(tmp_path):
    bad = make_word_lmdb(tmp_path / "bad", ["one", "two", "three"], corrupt_indices=[2])
    result = run_script("--check", bad)
    assert result.returncode != 0
    assert "index 2: undecodable image" in result.stdout and "FAILED, 1 problem(s)" in result.stdout
    assert "index 1" not in result.stdout and "index 3" not in result.stdout


def test_check_finds_missing_keys_bad_labels_and_bad_count(tmp_path, run_tool):
    png = encode_image(render_word("ok"))
    broken = tmp_path / "broken"
    writer = LmdbWriter(broken)
    writer.add_sample(png, "fine")
    writer.put("image-000000002", png)  # label 2 missing
    writer.put("label-000000003", "x".encode())  # image 3 missing
    writer.put("image-000000004", png)
    writer.put("label-000000004", b"\xff\xfe bad")  # not UTF-8
    writer.close(num_samples=4)
    result = run_tool("--check", broken)
    assert result.returncode != 0
    out = result.stdout
    assert "index 2: missing key label-000000002" in out
    assert "index 3: missing key image-000000003" in out
    assert "index 4: label is not UTF-8" in out
    assert "index 1" not in out

    for name, value in (("nocount", None), ("badcount", b"four")):
        path = tmp_path / name
        writer = LmdbWriter(path)
        writer.add_sample(png, "fine")
        writer.flush()
        if value is not None:
            writer.put("num-samples", value)
            writer.flush()
        writer.env.close()
        result = run_tool("--check", path)
        assert result.returncode != 0
        assert "num-samples" in result.stdout


def test_bad_arguments(tmp_path, run_tool):
    result = run_tool("--input_dir", tmp_path / "nope", "--gt_file", tmp_path / "gt.txt", "--output", tmp_path / "o")
    assert result.returncode == 2 and "nope" in result.stderr
    assert run_tool("--check", tmp_path / "nothing_here").returncode != 0
    (tmp_path / "empty_gt.txt").write_text("missing.png\tword\n")
    (tmp_path / "imgs").mkdir()
    nothing = run_tool("--input_dir", tmp_path / "imgs", "--gt_file", tmp_path / "empty_gt.txt", "--output",
                       tmp_path / "o")
    assert nothing.returncode != 0 and "no sample was written" in nothing.stderr
    assert not (tmp_path / "o" / "data.mdb").exists()
