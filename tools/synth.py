"""Write synthetic word crops with their exact glyph masks to LMDBs: the project's built-in training data.

Each crop comes from :mod:`synth.engine` (fonts from the installed ``fontpkg-*`` packages and matplotlib, plus
``--fonts_dir`` and, with ``--system_fonts``, the system's; natural or procedural backgrounds; decorations,
curved baselines, projective and elastic distortion, distractor text, blur, noise and JPEG; every step's
probability and range in ``synth.engine.EngineConfig``, changeable with ``--set NAME=VALUE``). The image goes to a
clovaai-format LMDB (JPEG q=95) and its glyph foreground to a mask LMDB (``mask-%09d``, PNG {0,1}, SPEC §1.4).
Sample ``i`` of seed ``s`` is a pure function of (s, i), so the output is byte-identical for a seed whatever
the number of workers.

Usage, from the repository root: ``python -m tools.synth --out OUT [--mask_out MASK_OUT] [--num N]`` or
``python -m tools.synth --demo_root ROOT`` or ``python -m tools.synth --builtin PRESET`` (see ``--help``).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import os
import shutil
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from lmdb_io import MASK_KEY, LmdbWriter, encode_png, is_lmdb_dir
from synth.engine import ENGINE_VERSION, EngineConfig, render_sample
from synth.fonts import FONT_SETS, FontOptions, default_catalogue

VAL_SEED_OFFSET = 1_000_003  # the validation split's seed is seed + this, so it never repeats a train sample
def _encoded_sample(index: int, seed: int, fonts: FontOptions, config: EngineConfig) -> tuple[bytes, bytes, str]:
    """(JPEG q=95 image bytes, PNG mask bytes, label) of one sample, as written to the LMDBs."""
    image, mask, label = render_sample(index, seed, default_catalogue(fonts), config)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), encode_png(mask), label


def _prepare_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing non-empty directory unless ``overwrite`` and it is an LMDB."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    if not is_lmdb_dir(path):
        raise FileExistsError(f"{path}: exists and is not an LMDB directory; not replacing it")


def write_synth_lmdb(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, num_samples: int, seed: int,
                     workers: int = 2, fonts: FontOptions = FontOptions(), config: EngineConfig | None = None,
                     progress: bool = True, overwrite: bool = False) -> float:
    """Render samples 0..num_samples-1 of ``seed`` into an image LMDB and the matching mask LMDB
    (1-based keys, ``num-samples`` set in both); returns the seconds it took.

    Both are built in hidden sibling directories and moved into place only when complete (mask
    first, image last), so an interrupted run leaves no image LMDB behind that looks finished.
    Existing outputs are replaced only with ``overwrite`` and only if they are LMDBs.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    targets = (Path(image_dir), Path(mask_dir))
    if targets[0].resolve() == targets[1].resolve():
        raise ValueError(f"image and mask LMDBs must be different directories, got {image_dir} twice")
    for target in targets:
        _prepare_target(target, overwrite)
    default_catalogue(fonts)  # fail here, before any worker starts, if no font is found
    partials = [target.with_name(f".{target.name}.partial") for target in targets]
    job = partial(_encoded_sample, seed=seed, fonts=fonts, config=config or EngineConfig())
    started = time.perf_counter()
    try:
        for path in partials:
            shutil.rmtree(path, ignore_errors=True)
        images, masks = LmdbWriter(partials[0]), LmdbWriter(partials[1])
        pool = Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(job, range(num_samples), chunksize=32) if pool else map(job, range(num_samples))
            for image_bytes, mask_bytes, label in tqdm(results, total=num_samples, disable=not progress,
                                                       desc=f"synth {targets[0].name}", unit="img"):
                index = images.add_sample(image_bytes, label)
                masks.put(MASK_KEY % index, mask_bytes)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            images.close()
            masks.close(images.num_samples)
        for target in targets:  # an old image LMDB must not outlive its replaced mask LMDB
            if target.exists():
                shutil.rmtree(target)
        for path, target in zip(partials[::-1], targets[::-1]):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        for path in partials:
            shutil.rmtree(path, ignore_errors=True)
    return time.perf_counter() - started


STAMP_FILE = "engine.json"  # what built a root: rebuilt when the engine, its config, sizes or seed change
#: plain samples only (matplotlib's faces, flat procedural backgrounds, mild rotation and perspective, no
#: decoration, distortion or corruption): the presets' curriculum, on which the attention decoder aligns. The
#: engine's full variety from the first step keeps a short run on its loss plateau (README "Real words after
#: training on the built-in data").
PLAIN_ENGINE = dataclasses.replace(EngineConfig().clean(), p_clean=0.0)
PLAIN_TRAIN_SIZE = 40_000  # --demo_root's default training split


@dataclasses.dataclass(frozen=True)
class BuiltinSet:
    """One built-in train/val root (relative to the working directory) and what :func:`build_demo_data`
    renders into it."""
    root: Path
    num_train: int
    config: EngineConfig

    def split(self, kind: str, split: str) -> str:
        return str(self.root / kind / split)


#: train.py's data without data arguments, per preset: (curriculum set, main set). The demo's 2 400 plain steps
#: × 64 see each plain crop about 3.8 times and its 1 100 varied steps each varied one 1.4 times; the cpu
#: preset's 3 000 plain steps see each of its plain crops 1.9 times and its 17 000 varied steps each varied one
#: 3.6 times. The demo plain set is the first 40 000 samples of the cpu one (same engine config and seed).
BUILTIN_SETS: dict[str, tuple[BuiltinSet, BuiltinSet]] = {
    "demo": (BuiltinSet(Path("data/synth_plain"), PLAIN_TRAIN_SIZE, PLAIN_ENGINE),
             BuiltinSet(Path("data/synth_varied"), 50_000, EngineConfig())),
    "cpu": (BuiltinSet(Path("data/synth_cpu_plain"), 100_000, PLAIN_ENGINE),
            BuiltinSet(Path("data/synth_cpu"), 300_000, EngineConfig())),
}


def build_demo_data(root: str | os.PathLike, num_train: int = PLAIN_TRAIN_SIZE, num_val: int = 1000, seed: int = 0,
                    workers: int = 2, log=print, config: EngineConfig = PLAIN_ENGINE) -> dict[str, Path]:
    """Create ``root/{images,masks}/{train,val}`` unless the root already holds both LMDB pairs built by this
    engine version and ``config`` with these sizes and seed (``root/engine.json``); train uses ``seed`` and val
    ``seed + 1_000_003``. Returns the image/mask roots and the four LMDB paths."""
    root = Path(root)
    paths = {"images": root / "images", "masks": root / "masks"}
    stamp = json.loads(json.dumps({"engine": ENGINE_VERSION, "config": dataclasses.asdict(config),
                                   "num_train": num_train, "num_val": num_val, "seed": seed}))
    splits = (("train", num_train, seed), ("val", num_val, seed + VAL_SEED_OFFSET))
    for split, _, _ in splits:
        paths[f"{split}_images"], paths[f"{split}_masks"] = root / "images" / split, root / "masks" / split
    stamp_path = root / STAMP_FILE
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp and all(
            is_lmdb_dir(paths[f"{split}_{kind}"]) for split, _, _ in splits for kind in ("images", "masks")):
        return paths
    stamp_path.unlink(missing_ok=True)
    for split, count, split_seed in splits:
        for leftover in (paths[f"{split}_images"], paths[f"{split}_masks"]):  # older or interrupted builds
            if leftover.exists():
                shutil.rmtree(leftover)
        seconds = write_synth_lmdb(paths[f"{split}_images"], paths[f"{split}_masks"], count, split_seed, workers,
                                   config=config)
        log(f"synthetic {split}: {count} samples in {seconds:.1f} s ({count / seconds:.0f} img/s, {workers} workers)")
    stamp_path.write_text(json.dumps(stamp))
    return paths


def builtin_sets(preset: str) -> tuple[BuiltinSet, BuiltinSet]:
    """The (curriculum, main) built-in sets of ``preset``: the cpu preset's own, the demo's for every other."""
    return BUILTIN_SETS.get(preset, BUILTIN_SETS["demo"])


def builtin_data(preset: str, curriculum: bool) -> dict[str, str | None]:
    """train.py's data paths without data arguments: the preset's main (full-variety) set, validated on its
    val split, and with ``curriculum`` (the preset has one) its plain set first."""
    plain, main = builtin_sets(preset)
    return {"train_data": main.split("images", "train"), "valid_data": main.split("images", "val"),
            "mask_root": main.split("masks", "train"),
            "curriculum_data": plain.split("images", "train") if curriculum else None,
            "curriculum_mask_root": plain.split("masks", "train") if curriculum else None}


def build_builtin_data(*train_data: str | None) -> None:
    """Build (once) every built-in set whose training split is among ``train_data`` (a run's main and
    curriculum data), plain sets first."""
    ordered = [pair[0] for pair in BUILTIN_SETS.values()] + [pair[1] for pair in BUILTIN_SETS.values()]
    for built in dict.fromkeys(ordered):
        if built.split("images", "train") in train_data:
            build_demo_data(built.root, num_train=built.num_train, config=built.config)


def parse_engine_settings(settings: list[str], base: EngineConfig = EngineConfig()) -> EngineConfig:
    """``base`` with ``NAME=VALUE`` overrides (``vocabulary.NAME=VALUE`` for the label fields); values
    are Python literals (numbers, tuples, booleans)."""
    top: dict[str, object] = {}
    vocabulary: dict[str, object] = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        if not sep:
            raise ValueError(f"--set expects NAME=VALUE, got {setting!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"--set {setting!r}: {text!r} is not a literal") from error
        target, field = (vocabulary, name[len("vocabulary."):]) if name.startswith("vocabulary.") else (top, name)
        target[field] = value
    try:
        return dataclasses.replace(base, **top, vocabulary=dataclasses.replace(base.vocabulary, **vocabulary))
    except TypeError as error:
        raise ValueError(f"--set: {error}") from error


def main(argv: list[str] | None = None) -> None:
    """Write one image/mask LMDB pair (``--out``) or the demo splits (``--demo_root``), printing their paths and
    the generation throughput."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="image LMDB directory to write")
    parser.add_argument("--mask_out", help="mask LMDB directory to write (default: <out>_mask)")
    parser.add_argument("--num", type=int, help=f"number of samples (default 20000; with --demo_root, the "
                                                f"training split's size, default {PLAIN_TRAIN_SIZE})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fonts_dir", help="extra .ttf/.otf fonts (searched recursively)")
    parser.add_argument("--system_fonts", action="store_true", help="also use the system's font directories")
    parser.add_argument("--font_set", choices=FONT_SETS, default="all", help="'matplotlib': only its DejaVu/STIX")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override an EngineConfig field, e.g. p_natural_background=0 or vocabulary.max_length=10 "
                             "(with --demo_root, of the plain set's config)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output LMDBs")
    parser.add_argument("--demo_root", help="build train/val LMDBs of plain crops (or --set's) under this root instead")
    parser.add_argument("--builtin", choices=sorted(BUILTIN_SETS),
                        help="build the built-in sets that train.py --preset PRESET reads without data arguments")
    args = parser.parse_args(argv)
    if args.builtin:
        plain, varied = BUILTIN_SETS[args.builtin]
        build_builtin_data(plain.split("images", "train"), varied.split("images", "train"))
        for built in (plain, varied):
            print(f"{built.root}: train ({built.num_train} crops) and val splits under images/ and masks/")
        return
    try:
        config = parse_engine_settings(args.set, PLAIN_ENGINE if args.demo_root else EngineConfig())
    except ValueError as error:
        parser.error(str(error))
    if args.demo_root:
        num = PLAIN_TRAIN_SIZE if args.num is None else args.num
        for name, path in build_demo_data(args.demo_root, num_train=num, seed=args.seed, workers=args.workers,
                                          config=config).items():
            print(f"{name}: {path}")
        return
    if not args.out:
        parser.error("give --out (or --demo_root)")
    num = 20000 if args.num is None else args.num
    mask_out = args.mask_out or args.out.rstrip("/") + "_mask"
    seconds = write_synth_lmdb(args.out, mask_out, num, args.seed, args.workers,
                               FontOptions(args.fonts_dir, args.system_fonts, args.font_set), config,
                               overwrite=args.overwrite)
    print(f"images: {args.out}\nmasks: {mask_out}\n{num} samples in {seconds:.1f} s "
          f"({num / seconds:.0f} img/s, {args.workers} workers)")


if __name__ == "__main__":
    main()
