"""Font layer of the synthetic word-image engine: find, classify, check and load the fonts words are drawn in.

Scene-text recognisers generalise across typefaces only if they are trained on many of them, so the engine draws
each sample in a face picked from every font it can find: the Google Fonts families installed as ``fontpkg-*``
wheels (``requirements-fonts.txt``; each registers a ``fontpkg.family`` entry point whose module has ``ROOT`` and
``FAMILY`` and ships ``metadata.json``), matplotlib's bundled DejaVu and STIX faces, a user folder of .ttf/.otf
files and, on request, the system font folders. Every face carries its licence and source so the README can say
what the training data was drawn with.

A face is kept only if it covers all of ``0-9a-zA-Z``: symbol, icon and non-Latin fonts would otherwise draw
tofu boxes that the label does not describe. For the same reason a sample is drawn only in faces whose cmap covers
every character of its label (``FontCatalogue.covering``). Run ``python -m synth.fonts`` for a markdown table of
the discovered families.
"""
from __future__ import annotations

import argparse
import json
import os
import string
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterator, Sequence, overload

import matplotlib
from fontTools.ttLib import TTFont, TTLibError
from PIL import ImageFont

REQUIRED_CHARACTERS = frozenset(string.digits + string.ascii_letters)
"""Characters every kept face must map: words are drawn from ``0-9a-zA-Z`` (plus whatever else a face covers)."""

CATEGORIES = ("serif", "sans", "slab", "condensed", "display", "monospace", "handwriting", "other")
"""The categories a face is classified into, in the order tables list them."""

ENTRY_POINT_GROUP = "fontpkg.family"
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")
FONT_SUFFIXES = (".ttf", ".otf")

# fontTools reports malformed font data as any of these, depending on which table is broken and how.
_PARSE_ERRORS = (TTLibError, struct.error, AssertionError, EOFError, IndexError, KeyError, ValueError)

# Google's categories, most specific first: a family listed as both SANS_SERIF and MONOSPACE is monospace.
_GOOGLE_CATEGORIES = (("MONOSPACE", "monospace"), ("HANDWRITING", "handwriting"), ("DISPLAY", "display"),
                      ("SERIF", "serif"), ("SANS_SERIF", "sans"))
# Google files slab serifs under SERIF or DISPLAY and condensed faces under SANS_SERIF or DISPLAY; a recogniser
# sees them as distinct styles, so the family name refines the category. Families whose name does not say so
# are listed explicitly.
_SLAB_WORDS = ("slab",)
_SLAB_FAMILIES = frozenset({"arvo", "bitter", "sanchez", "rokkitt", "kameron", "crete round", "josefin slab"})
_CONDENSED_WORDS = ("condensed", "narrow", "bebas", "anton", "oswald", "fjalla", "teko", "yanone")
_CONDENSED_FAMILIES = frozenset({"league gothic", "pathway gothic one", "six caps", "big shoulders display"})

_WEIGHT_NAMES = {100: "thin", 200: "extralight", 300: "light", 400: "regular", 500: "medium", 600: "semibold",
                 700: "bold", 800: "extrabold", 900: "black"}
# Style words in font name tables that mean the same as the four basic styles.
_STYLE_SYNONYMS = {"book": "regular", "normal": "regular", "roman": "regular", "oblique": "italic"}

# matplotlib's bundled text faces (the *Display files only hold a few glyphs; STIXNonUni/STIXSiz* are math).
_MATPLOTLIB_FACES = (("DejaVuSans.ttf", "sans"), ("DejaVuSans-Bold.ttf", "sans"),
                     ("DejaVuSans-Oblique.ttf", "sans"), ("DejaVuSans-BoldOblique.ttf", "sans"),
                     ("DejaVuSerif.ttf", "serif"), ("DejaVuSerif-Bold.ttf", "serif"),
                     ("DejaVuSerif-Italic.ttf", "serif"), ("DejaVuSerif-BoldItalic.ttf", "serif"),
                     ("DejaVuSansMono.ttf", "monospace"), ("DejaVuSansMono-Bold.ttf", "monospace"),
                     ("DejaVuSansMono-Oblique.ttf", "monospace"), ("DejaVuSansMono-BoldOblique.ttf", "monospace"),
                     ("STIXGeneral.ttf", "serif"), ("STIXGeneralBol.ttf", "serif"),
                     ("STIXGeneralItalic.ttf", "serif"), ("STIXGeneralBolIta.ttf", "serif"))


@dataclass(frozen=True)
class FontFace:
    """One font file the engine can draw with.

    ``style`` is "regular", "italic", "bold", "bold italic" or the file's own weight/style description (e.g.
    "light italic"); a variable font is one face whose ``weight_axis`` is the (min, max) of its wght axis, so
    any weight in between can be requested from ``load_font``. ``licence`` and ``source`` (the distribution, e.g.
    "fontpkg-lora", "matplotlib", the user's fonts_dir, or "system") record where the face came from."""

    path: str
    family: str
    style: str
    category: str
    licence: str
    source: str
    weight_axis: tuple[float, float] | None = None


@dataclass(frozen=True)
class _VariationLayout:
    """A variable font's axis defaults in FreeType's (= fvar) order, the position of its wght axis and that
    axis's (min, max)."""

    defaults: tuple[float, ...]
    weight_index: int
    weight_range: tuple[float, float]


def _open_font(path: str) -> TTFont:
    """Open ``path`` lazily with fontTools, turning a parse failure into a ValueError that names the file."""
    try:
        return TTFont(path, lazy=True)
    except _PARSE_ERRORS as exc:
        raise ValueError(f"fontTools cannot parse font file {path}: {exc}") from exc


@lru_cache(maxsize=None)
def covered_characters(path: str) -> frozenset[str]:
    """The characters ``path``'s best Unicode cmap maps to a glyph (cached: discovery and catalogues share it).

    Raises ValueError naming the file when fontTools cannot parse it."""
    with _open_font(path) as font:
        try:
            cmap = font.getBestCmap() or {}
        except _PARSE_ERRORS as exc:
            raise ValueError(f"fontTools cannot read the cmap of font file {path}: {exc}") from exc
    return frozenset(chr(code) for code in cmap)


@lru_cache(maxsize=None)
def _variation_layout(path: str) -> _VariationLayout | None:
    """The fvar axes of ``path`` if it is a variable font with a wght axis, else None."""
    with _open_font(path) as font:
        if "fvar" not in font:
            return None
        axes = font["fvar"].axes
        tags = [axis.axisTag for axis in axes]
        if "wght" not in tags:
            return None
        weight = axes[tags.index("wght")]
        return _VariationLayout(tuple(float(axis.defaultValue) for axis in axes), tags.index("wght"),
                                (float(weight.minValue), float(weight.maxValue)))


def _weight_axis(path: str) -> tuple[float, float] | None:
    """(min, max) of the wght axis of a variable font file, or None for a static font."""
    layout = _variation_layout(path)
    return None if layout is None else layout.weight_range


def _refine_category(family: str, category: str) -> str:
    """Reclassify slab and condensed families, which Google files under broader categories, by their name."""
    name = family.lower()
    if name in _SLAB_FAMILIES or any(word in name for word in _SLAB_WORDS):
        return "slab"
    if name in _CONDENSED_FAMILIES or any(word in name for word in _CONDENSED_WORDS):
        return "condensed"
    return category


def _google_category(family: str, google: Sequence[str]) -> str:
    """Map a fontpkg metadata category list (e.g. ["DISPLAY", "SANS_SERIF"]) to one of ``CATEGORIES``."""
    category = next((ours for theirs, ours in _GOOGLE_CATEGORIES if theirs in google), "other")
    return _refine_category(family, category)


def _guess_category(family: str, fixed_pitch: bool) -> str:
    """Best guess for a font without catalogue metadata, from its family name and the post table's pitch flag."""
    name = family.lower()
    if fixed_pitch or "mono" in name:
        category = "monospace"
    elif "sans" in name:
        category = "sans"
    elif "serif" in name:
        category = "serif"
    else:
        category = "other"
    return _refine_category(family, category)


def _style_name(style: str, weight: int | None) -> str:
    """"regular"/"italic"/"bold"/"bold italic", or e.g. "light italic", from a fontpkg file entry."""
    italic = style.lower() == "italic"
    base = _WEIGHT_NAMES.get(weight, f"w{weight}") if weight is not None else "regular"
    if italic:
        return "italic" if base == "regular" else f"{base} italic"
    return base


def _normalise_subfamily(subfamily: str) -> str:
    """A name table subfamily ("Book", "Bold Oblique") in the vocabulary of ``_style_name``."""
    words = [_STYLE_SYNONYMS.get(word, word) for word in subfamily.lower().split()]
    if len(words) > 1 and "regular" in words:
        words.remove("regular")
    return " ".join(words) or "regular"


def _fontpkg_family_faces(root: Path, source: str) -> list[FontFace]:
    """The faces one fontpkg distribution lists in its ``metadata.json``."""
    meta = json.loads((root / "metadata.json").read_text(encoding="utf-8"))
    family = meta["family"]
    category = _google_category(family, meta.get("category", []))
    faces = []
    for entry in meta["files"]:
        path = os.path.realpath(root / entry["path"])
        weight_axis = _weight_axis(path) if entry.get("variable") else None
        weight = None if weight_axis else entry.get("weight")
        faces.append(FontFace(path, family, _style_name(entry.get("style", "normal"), weight), category,
                              meta.get("license", "unknown"), source, weight_axis))
    return faces


def _fontpkg_faces() -> list[FontFace]:
    """Every face of every installed ``fontpkg`` family (entry point group ``fontpkg.family``).

    A distribution whose module or metadata cannot be read is reported with a warning and skipped: the group is
    open to any package, and one broken install should not stop the others from being used."""
    faces: list[FontFace] = []
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        source = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        try:
            faces.extend(_fontpkg_family_faces(Path(entry_point.load().ROOT), source))
        except (ImportError, AttributeError, OSError, KeyError, ValueError) as exc:  # ValueError: bad JSON
            warnings.warn(f"skipping font package {source}: {exc!r}", stacklevel=3)
    return faces


def _matplotlib_faces() -> list[FontFace]:
    """matplotlib's bundled DejaVu Sans/Serif/Sans Mono and STIXGeneral faces (installed with matplotlib)."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    faces = []
    for name, category in _MATPLOTLIB_FACES:
        path = folder / name
        if path.is_file():
            licence = "STIX (OFL-1.1)" if name.startswith("STIX") else "Bitstream Vera / DejaVu"
            faces.append(replace(_face_from_file(str(path), "matplotlib", licence), category=category))
    return faces


def _face_from_file(path: str, source: str, licence: str) -> FontFace:
    """A face for a font file without catalogue metadata: names from its name table, category guessed."""
    with _open_font(path) as font:
        try:
            names = font["name"]
            family = names.getBestFamilyName() or Path(path).stem
            subfamily = names.getBestSubFamilyName() or "regular"
            fixed_pitch = bool(font["post"].isFixedPitch) if "post" in font else False
        except _PARSE_ERRORS as exc:
            raise ValueError(f"fontTools cannot read the names of font file {path}: {exc}") from exc
    return FontFace(os.path.realpath(path), family, _normalise_subfamily(subfamily),
                    _guess_category(family, fixed_pitch), licence, source, _weight_axis(path))


def _folder_faces(folder: Path, source: str, licence: str) -> list[FontFace]:
    """A face for every .ttf/.otf under ``folder`` (recursive); unreadable files are warned about and skipped."""
    faces = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in FONT_SUFFIXES or not path.is_file():
            continue
        try:
            faces.append(_face_from_file(str(path), source, licence))
        except ValueError as exc:
            warnings.warn(f"skipping font file {path}: {exc}", stacklevel=3)
    return faces


def _system_faces() -> list[FontFace]:
    """The .ttf/.otf files of the usual Linux system and per-user font folders that exist."""
    faces = []
    for folder in SYSTEM_FONT_DIRS:
        path = Path(folder).expanduser()
        if path.is_dir():
            faces.extend(_folder_faces(path, "system", "unknown (system font)"))
    return faces


def _covers_latin(face: FontFace, warn: bool) -> bool:
    """Whether ``face`` maps all of ``REQUIRED_CHARACTERS``; with ``warn``, say which file lacks which ones."""
    try:
        missing = REQUIRED_CHARACTERS - covered_characters(face.path)
    except ValueError as exc:
        warnings.warn(f"skipping font file {face.path}: {exc}", stacklevel=3)
        return False
    if missing and warn:
        warnings.warn(f"skipping font file {face.path} ({face.family}): it lacks the characters "
                      f"{''.join(sorted(missing))!r}", stacklevel=3)
    return not missing


def discover_fonts(fonts_dir: str | os.PathLike[str] | None = None, system: bool = False) -> list[FontFace]:
    """Every usable face: installed fontpkg families, matplotlib's DejaVu/STIX, ``fonts_dir`` and (``system``)
    the system font folders, sorted by (source, path) so that seeded sampling is reproducible.

    Faces lacking any of ``0-9a-zA-Z`` are dropped (with a warning naming the file and the missing characters,
    except for system fonts, where non-Latin and symbol fonts are expected); a file found twice (same real path)
    is kept once, under the first source above. Raises FileNotFoundError if ``fonts_dir`` does not exist or if
    no face is found at all."""
    candidates = _fontpkg_faces() + _matplotlib_faces()
    if fonts_dir is not None:
        folder = Path(fonts_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"fonts_dir {str(folder)!r} does not exist or is not a directory")
        candidates += _folder_faces(folder, str(folder), "user")
    if system:
        candidates += _system_faces()
    unique: dict[str, FontFace] = {}
    for face in candidates:
        unique.setdefault(face.path, face)
    faces = [face for face in unique.values() if _covers_latin(face, warn=face.source != "system")]
    if not faces:
        raise FileNotFoundError("no usable font found: install requirements-fonts.txt (pip install -r "
                                "requirements-fonts.txt), or pass fonts_dir with .ttf/.otf files covering 0-9a-zA-Z")
    return sorted(faces, key=lambda face: (face.source, face.path))


def _text_charset(text: str) -> frozenset[str]:
    """The characters of ``text`` a face must cover (whitespace is never drawn, so it needs no glyph)."""
    return frozenset(char for char in text if not char.isspace())


class FontCatalogue(Sequence[FontFace]):
    """An immutable sequence of faces with their cmaps precomputed, answering "which faces can draw this text?".

    ``covering`` runs once per generated sample over a few hundred faces, so it first drops the characters every
    face covers (for discovered faces at least ``0-9a-zA-Z``, so most words need no scan at all) and caches the
    answer per remaining character set."""

    def __init__(self, faces: Sequence[FontFace], cache_size: int = 65536) -> None:
        self.faces = tuple(faces)
        self._coverage = tuple(covered_characters(face.path) for face in self.faces)
        self._common = frozenset.intersection(*self._coverage) if self._coverage else frozenset()
        self._scan = lru_cache(maxsize=cache_size)(self._faces_covering_all)

    def _faces_covering_all(self, charset: frozenset[str]) -> tuple[FontFace, ...]:
        """The faces whose cmap includes every character of ``charset`` (cached per charset in ``_scan``)."""
        return tuple(face for face, chars in zip(self.faces, self._coverage) if charset <= chars)

    def covering(self, text: str) -> tuple[FontFace, ...]:
        """The faces that cover every non-space character of ``text``, in catalogue order (may be empty)."""
        rest = _text_charset(text) - self._common
        return self.faces if not rest else self._scan(rest)

    def __len__(self) -> int:
        return len(self.faces)

    @overload
    def __getitem__(self, index: int) -> FontFace: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[FontFace, ...]: ...

    def __getitem__(self, index: int | slice) -> FontFace | tuple[FontFace, ...]:
        return self.faces[index]

    def __iter__(self) -> Iterator[FontFace]:
        return iter(self.faces)


@lru_cache(maxsize=8)
@lru_cache(maxsize=4096)
def _cached_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """One FreeType object per (file, size): opening a font costs far more than drawing a word with it."""
    return ImageFont.truetype(path, size)


def load_font(face: FontFace, size: int, weight: float | None = None) -> ImageFont.FreeTypeFont:
    """The Pillow font for ``face`` at ``size`` px; for a variable face, with its wght axis set to ``weight``
    (clamped to ``face.weight_axis``; None = the font's default weight) and every other axis at its default.

    The returned object is cached and shared, so the axes are set on every call: use it before the next
    ``load_font`` call for the same (face, size). ``weight`` is ignored for static faces."""
    font = _cached_font(face.path, size)
    layout = _variation_layout(face.path)
    if face.weight_axis is None or layout is None:
        return font
    low, high = face.weight_axis
    axes = list(layout.defaults)
    if weight is not None:
        axes[layout.weight_index] = min(max(weight, low), high)
    font.set_variation_by_axes(axes)
    return font


#: lowercase ink at least this share of the capital's height means the face draws capitals for lowercase
CAPS_ONLY_RATIO = 0.9


@lru_cache(maxsize=None)
def is_caps_only(face: FontFace) -> bool:
    """Whether ``face`` draws lowercase letters as capitals (Bebas Neue, Bungee, Luckiest Guy): a word drawn in
    it reads in capitals, so its label must be too. Decided from the ink height of x, a, e, z, n against
    their capitals at 64 px."""
    font = load_font(face, 64)
    ratios = []
    for letter in "xaezn":
        lower, upper = font.getbbox(letter), font.getbbox(letter.upper())
        ratios.append((lower[3] - lower[1]) / max(upper[3] - upper[1], 1))
    return min(ratios) >= CAPS_ONLY_RATIO


#: which discovered faces a catalogue keeps: every one, or only matplotlib's (the ablation of the font packages)
FONT_SETS = ("all", "matplotlib")


@dataclass(frozen=True)
class FontOptions:
    """Which faces the engine draws from: the discovered ones, ``fonts_dir``'s, the system's, narrowed by
    ``font_set``."""

    fonts_dir: str | None = None
    system: bool = False
    font_set: str = "all"
    min_weight: int = 300  # static faces lighter than this (thin, extra-light) are left out


@lru_cache(maxsize=None)
def weight_class(path: str) -> int:
    """The OS/2 weight class of a font file (400 regular, 700 bold; 400 when the table is missing)."""
    with _open_font(path) as font:
        return int(font["OS/2"].usWeightClass) if "OS/2" in font else 400


@lru_cache(maxsize=4)
def default_catalogue(options: FontOptions = FontOptions()) -> FontCatalogue:
    """The catalogue of ``options``, discovered once per process (each DataLoader or pool worker its own).

    Static faces under ``min_weight`` are dropped: their hairline strokes stay below half a pixel's coverage
    at crop sizes, so the glyph mask would keep only scattered dots of clearly visible text. Variable faces
    stay (the engine draws their weight from ``EngineConfig.weight_range``)."""
    if options.font_set not in FONT_SETS:
        raise ValueError(f"unknown font set {options.font_set!r}; choose from {FONT_SETS}")
    faces = discover_fonts(options.fonts_dir, system=options.system)
    if options.font_set == "matplotlib":
        faces = [face for face in faces if face.source == "matplotlib"]
    return FontCatalogue([face for face in faces
                          if face.weight_axis is not None or weight_class(face.path) >= options.min_weight])


def font_table(faces: Sequence[FontFace]) -> list[dict[str, str | int]]:
    """One row per (family, source): family, category, number of faces ("styles"), licence, source; sorted by
    category (in ``CATEGORIES`` order) then family, for the README's font table."""
    rows: dict[tuple[str, str], dict[str, str | int]] = {}
    for face in faces:
        row = rows.setdefault((face.family, face.source), {"family": face.family, "category": face.category,
                                                           "styles": 0, "licence": face.licence,
                                                           "source": face.source})
        row["styles"] = int(row["styles"]) + 1
    order = {category: rank for rank, category in enumerate(CATEGORIES)}
    return sorted(rows.values(), key=lambda row: (order.get(str(row["category"]), len(order)),
                                                  str(row["family"]).lower(), str(row["source"])))


def markdown_font_table(faces: Sequence[FontFace]) -> str:
    """The ``font_table`` rows as a markdown table, followed by totals (families, faces, per-category counts)."""
    rows = font_table(faces)
    lines = ["| family | category | styles | licence | source |", "| --- | --- | ---: | --- | --- |"]
    lines += [f"| {row['family']} | {row['category']} | {row['styles']} | {row['licence']} | {row['source']} |"
              for row in rows]
    families = Counter(str(row["category"]) for row in rows)
    face_counts = Counter(face.category for face in faces)
    lines += ["", f"**{len(rows)} families, {len(faces)} faces**", "",
              "| category | families | faces |", "| --- | ---: | ---: |"]
    lines += [f"| {category} | {families[category]} | {face_counts[category]} |"
              for category in CATEGORIES if families[category]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m synth.fonts [--fonts-dir DIR] [--system]``: print the faces the engine draws from (the
    default catalogue) as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fonts-dir", default=None, help="extra folder of .ttf/.otf files (searched recursively)")
    parser.add_argument("--system", action="store_true", help="also use the system font folders")
    args = parser.parse_args(argv)
    print(markdown_font_table(default_catalogue(FontOptions(args.fonts_dir, args.system)).faces))


if __name__ == "__main__":
    main()
