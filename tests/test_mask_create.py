"""mask_create.generate_mask / merge: mask LMDBs for every image LMDB, sharded, resumable, verified."""
from __future__ import annotations

import io
import multiprocessing
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

import dataset as dataset_module
from conftest import CORRUPT_IMAGE_BYTES, encode_image, raw_entries, render_word
from dataset import Sample, Skipped, build_dataset_groups, mirror_mask_path
from lmdb_io import LmdbWriter, encode_png
from mask_create import generate_mask, merge
from mask_create.generate_mask import generate_shard, mask_seed, plan_shards, shard_tasks
from mask_create.merge import MergeError, merge_shards
from modules.kmeans_mask import text_mask_from_pil
from tokenizer import Tokenizer, load_charset

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = Tokenizer(load_charset("36"), max_label_length=25)
NUM = 23
CORRUPT, TINY, THIN = 7, 11, 12  # an undecodable image, a 1x1 image, a 1-pixel-high strip
LEAF_A, LEAF_B = Path("training/A"), Path("training/B/sub")


def leaf_images() -> dict[Path, list[bytes]]:
    """Encoded images of the two leaves: varied sizes, PNG/JPEG, RGB/L, and the special cases above."""
    words = ["hello", "world", "mask", "kmeans", "glyph", "siga", "broken", "text", "scene", "lmdb", "dot", "strip",
             "shard", "merge", "pool", "seed", "resume", "vote", "border", "luma", "png", "jpeg", "last"]
    images = []
    for index, word in enumerate(words, start=1):
        if index == CORRUPT:
            images.append(CORRUPT_IMAGE_BYTES)
        elif index == TINY:
            images.append(encode_image(Image.new("RGB", (1, 1), (200, 10, 10))))
        elif index == THIN:
            images.append(encode_image(Image.fromarray(np.array([[250, 250, 250, 10, 10, 250]], np.uint8))))
        else:
            image = render_word(word, (40 + 3 * index, 16 + index % 5), mode="L" if index % 4 == 0 else "RGB")
            images.append(encode_image(image, "JPEG", quality=90) if index % 5 == 0 else encode_image(image))
    other = [encode_image(render_word(word, (50, 18))) for word in ("one", "two", "three")]
    return {LEAF_A: images, LEAF_B: other}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for leaf, images in leaf_images().items():
        with LmdbWriter(root / leaf) as writer:
            for index, data in enumerate(images, start=1):
                writer.add_sample(data, f"w{index}")
    return root


def run_cli(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def run_main(main, *args, capsys) -> subprocess.CompletedProcess:
    """A CLI's main() in this process (faster than a subprocess), with its exit code and output."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


@pytest.fixture(scope="module")
def generated(image_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Masks of ``image_root`` made by the CLI with 2 workers and shards of 5 indices."""
    mask_root = tmp_path_factory.mktemp("masks") / "out"
    result = run_cli("mask_create.generate_mask", "--image_root", image_root / "training", "--mask_root", mask_root,
                     "--workers", 2, "--shard_size", 5, "--seed", 3)
    assert result.returncode == 0, result.stdout + result.stderr
    return mask_root, result



def decode_mask(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "L"
    return np.asarray(image)


def test_plan_covers_every_index_including_the_last():
    assert plan_shards(23, 5) == [(1, 5), (6, 10), (11, 15), (16, 20), (21, 23)]
    assert plan_shards(10, 5) == [(1, 5), (6, 10)]
    assert plan_shards(1, 2000) == [(1, 1)] and plan_shards(0, 5) == []


def test_cli_writes_one_mask_per_decodable_image(image_root, generated):
    mask_root, result = generated
    images = leaf_images()
    for leaf in (LEAF_A, LEAF_B):  # the mask tree mirrors the image tree exactly as the dataset expects
        mirrored = mirror_mask_path(image_root / leaf, image_root / "training", mask_root)
        assert mirrored == mask_root / leaf.relative_to("training") and (mirrored / "data.mdb").is_file()
    entries = raw_entries(mask_root / "A")
    assert entries[b"num-samples"] == str(NUM).encode()
    assert sorted(entries) == sorted([b"num-samples"] + [b"mask-%09d" % i for i in range(1, NUM + 1) if i != CORRUPT])
    for index, data in enumerate(images[LEAF_A], start=1):
        if index == CORRUPT:
            continue
        image = Image.open(io.BytesIO(data)).convert("RGB")
        mask = decode_mask(entries[b"mask-%09d" % index])
        assert mask.shape == (image.height, image.width) and set(np.unique(mask)) <= {0, 1}
        assert np.array_equal(mask, text_mask_from_pil(image, mask_seed(3, index))), index
        if index not in (TINY, THIN):
            assert 0 < mask.mean() < 0.5  # dark text on a light background: text is the minority
    assert not decode_mask(entries[b"mask-%09d" % TINY]).any()  # 1x1: all-zero by decision
    assert decode_mask(entries[b"mask-%09d" % THIN]).tolist() == [[0, 0, 0, 1, 1, 0]]  # 1xN: the usual rule
    other = raw_entries(mask_root / "B" / "sub")
    assert other[b"num-samples"] == b"3" and b"mask-000000003" in other

    out = result.stdout
    assert f"skipped {image_root / LEAF_A} index {CORRUPT}: undecodable image" in out
    assert "N=23 masks=22 skipped=1 tiny=1 shards=5 (reused 0)" in out
    assert "N=3 masks=3 skipped=0 tiny=0 shards=1" in out
    assert "done: 2 image LMDB(s), 25 mask(s) written, 1 image(s) skipped" in out
    assert not (mask_root / generate_mask.WORK_DIR_NAME).exists()  # shards are removed once merged


def test_output_independent_of_workers_and_shard_size(image_root, generated, tmp_path, capsys):
    mask_root, _ = generated
    single = run_main(generate_mask.main, "--image_root", image_root / "training", "--mask_root", tmp_path / "one",
                      "--workers", 1, "--shard_size", 4, "--seed", 3, "--no_progress", capsys=capsys)
    assert single.returncode == 0, single.stderr
    for leaf in ("A", "B/sub"):
        assert raw_entries(tmp_path / "one" / leaf) == raw_entries(mask_root / leaf)

    stamp = (tmp_path / "one" / "A" / "data.mdb").stat().st_mtime_ns
    again = run_main(generate_mask.main, "--image_root", image_root / "training", "--mask_root", tmp_path / "one",
                     "--workers", 1, "--seed", 3, "--no_progress", capsys=capsys)
    assert again.returncode == 0 and "already complete (num-samples=23), left unchanged" in again.stdout
    assert (tmp_path / "one" / "A" / "data.mdb").stat().st_mtime_ns == stamp


def test_resume_reuses_finished_shards_only(image_root, generated, tmp_path, capsys):
    mask_root, _ = generated
    leaf, out = image_root / LEAF_A, tmp_path / "resumed"
    work, tasks = shard_tasks(leaf, out / "A", out, NUM, 3, 5)
    work.mkdir(parents=True)
    generate_shard(tasks[1])  # 6-10, finished by an "earlier run"; tampered below to prove it is reused as is
    ones = encode_png(np.ones(decode_mask(raw_entries(mask_root / "A")[b"mask-000000006"]).shape, np.uint8))
    env = lmdb.open(tasks[1].shard_dir, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"mask-000000006", ones)
    env.close()
    with LmdbWriter(tasks[0].shard_dir) as writer:  # interrupted: an LMDB but no done-marker
        writer.put("mask-000000001", b"half-written")
    generate_shard(generate_mask.ShardTask(tasks[2].leaf, tasks[2].shard_dir, 11, 15, seed=99))  # another seed

    result = run_main(generate_mask.main, "--image_root", image_root / "training", "--mask_root", out, "--workers", 2,
                      "--shard_size", 5, "--seed", 3, "--no_progress", capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert "A: 1 of 5 shards already done" in result.stdout and "(reused 1)" in result.stdout
    assert f"index {CORRUPT}: undecodable image" in result.stdout  # the reused shard's recorded skip
    assert "N=23 masks=22 skipped=1 tiny=1" in result.stdout
    resumed, reference = raw_entries(out / "A"), raw_entries(mask_root / "A")
    assert resumed[b"mask-000000006"] == ones  # the finished shard was not recomputed
    resumed[b"mask-000000006"] = reference[b"mask-000000006"]
    assert resumed == reference  # the partial and the other-seed shards were recomputed
    assert not (out / generate_mask.WORK_DIR_NAME).exists()


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="workers must inherit the monkeypatch")
def test_worker_exception_fails_the_run_naming_leaf_and_shard(image_root, tmp_path, monkeypatch, capsys):
    def failing_rule(image, seed):
        if seed == mask_seed(0, 13):
            raise RuntimeError("boom at 13")
        return text_mask_from_pil(image, seed)

    monkeypatch.setattr(generate_mask, "text_mask_from_pil", failing_rule)  # forked workers inherit it
    result = run_main(generate_mask.main, "--image_root", image_root / "training", "--mask_root", tmp_path / "m",
                      "--workers", 2, "--shard_size", 5, "--no_progress", capsys=capsys)
    assert result.returncode == 1
    assert f"{image_root / LEAF_A}: shard 11-15 failed with RuntimeError: boom at 13" in result.stderr
    assert not (tmp_path / "m" / "A" / "data.mdb").exists()
    work, tasks = shard_tasks(image_root / LEAF_A, tmp_path / "m" / "A", tmp_path / "m", NUM, 0, 5)
    assert not tasks[2].marker.exists()  # the failed shard will be recomputed by the next run


def test_existing_foreign_mask_lmdb_and_bad_roots_are_refused(image_root, tmp_path, capsys):
    writer = LmdbWriter(tmp_path / "m" / "A")  # e.g. the official merge: num-samples of the last shard
    writer.put("mask-000000001", b"x")
    writer.close(num_samples=1)
    result = run_main(generate_mask.main, "--image_root", image_root / "training", "--mask_root", tmp_path / "m",
                      "--workers", 1, "--no_progress", capsys=capsys)
    assert result.returncode == 1 and "already exists there with num-samples=1, expected 23" in result.stderr
    assert raw_entries(tmp_path / "m" / "A") == {b"mask-000000001": b"x", b"num-samples": b"1"}

    nested = run_main(generate_mask.main, "--image_root", image_root, "--mask_root", image_root / "masks",
                      capsys=capsys)
    assert nested.returncode == 2 and "must not contain each other" in nested.stderr
    (tmp_path / "empty").mkdir()
    nothing = run_main(generate_mask.main, "--image_root", tmp_path / "empty", "--mask_root", tmp_path / "o",
                       capsys=capsys)
    assert nothing.returncode == 2 and "no LMDB" in nothing.stderr


def write_shard(path: Path, indices: list[int]) -> Path:
    with LmdbWriter(path) as writer:
        for index in indices:
            writer.put("mask-%09d" % index, encode_png(np.full((2, 3), index % 2, np.uint8)))
    return path


def test_merge_verifies_coverage(tmp_path, capsys):
    shards = [write_shard(tmp_path / "shards" / "s1", [1, 2]), write_shard(tmp_path / "shards" / "s2", [4, 5, 6])]
    with pytest.raises(MergeError, match=r"missing mask indices: 3, 7$"):
        merge_shards(shards, tmp_path / "out", 7)
    with pytest.raises(MergeError, match=r"outside 1\.\.5: 6"):
        merge_shards(shards, tmp_path / "out", 5, skipped=[3])
    with pytest.raises(MergeError, match=r"skipped but present: 2"):
        merge_shards(shards, tmp_path / "out", 6, skipped=[2, 3])
    with pytest.raises(MergeError, match=r"index 2 is in two shards"):
        merge_shards(shards + [write_shard(tmp_path / "dup", [2])], tmp_path / "out", 6, skipped=[3])
    assert not (tmp_path / "out" / "data.mdb").exists()  # nothing is written when the check fails

    assert merge_shards(shards, tmp_path / "out", 6, skipped=[3]) == 5
    entries = raw_entries(tmp_path / "out")
    assert entries[b"num-samples"] == b"6" and b"mask-000000003" not in entries
    assert sorted(entries) == [b"mask-%09d" % i for i in (1, 2, 4, 5, 6)] + [b"num-samples"]
    with pytest.raises(FileExistsError):
        merge_shards(shards, tmp_path / "out", 6, skipped=[3])

    failed = run_main(merge.main, "--shards", tmp_path / "shards", "--out", tmp_path / "cli", "--num_samples", 6,
                      capsys=capsys)
    assert failed.returncode == 1 and "missing mask indices: 3" in failed.stderr
    ok = run_cli("mask_create.merge", "--shards", tmp_path / "shards", "--out", tmp_path / "cli", "--num_samples", 6,
                 "--skipped", 3)
    assert ok.returncode == 0, ok.stderr
    assert "merged 5 mask(s) from 2 shard(s)" in ok.stdout
    assert raw_entries(tmp_path / "cli") == entries


def test_dataset_reads_the_generated_masks(image_root, generated, monkeypatch):
    mask_root, _ = generated

    def no_fallback(*args, **kwargs):
        raise AssertionError("the dataset fell back to K-means although a mask was stored")

    monkeypatch.setattr(dataset_module, "text_mask_from_pil", no_fallback)
    (group,) = build_dataset_groups(image_root / "training", ["A"], TOKENIZER, (32, 100), "train", need_masks=True,
                                    mask_root=mask_root)
    stored = raw_entries(mask_root / "A")
    assert len(group) == NUM
    for item in range(NUM):
        sample, index = group[item], item + 1
        if index == CORRUPT:
            assert isinstance(sample, Skipped) and "undecodable image" in sample.reason
            continue
        assert isinstance(sample, Sample) and sample.mask.shape == (32, 100)
        expected = Image.fromarray(decode_mask(stored[b"mask-%09d" % index]).astype(np.int32))  # integer, as official
        assert np.array_equal(sample.mask, np.asarray(expected.resize((100, 32), Image.BICUBIC), dtype=np.float32))
