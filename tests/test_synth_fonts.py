"""Font layer of the synthetic engine (synth/fonts.py): discovery breadth, Latin coverage filtering, per-text
coverage, determinism, errors, rendering of every face and variable-font weights."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from fontTools import subset
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw

import synth.fonts as fonts
from synth.fonts import (CATEGORIES, FontCatalogue, FontFace, covered_characters, discover_fonts,
                         font_table, load_font, markdown_font_table)

DEJAVU = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
MISSING = "7XYZxyz"  # characters the subset font lacks
UNASSIGNED = "\u0378"  # an unassigned code point: no font maps it
LICENCES = {"OFL-1.1", "Apache-2.0", "Bitstream Vera / DejaVu", "STIX (OFL-1.1)"}


@pytest.fixture(scope="module")
def faces() -> list[FontFace]:
    return discover_fonts()


@pytest.fixture()
def partial_font(tmp_path: Path) -> Path:
    """A DejaVu Sans subset that lacks the characters of ``MISSING``."""
    keep = sorted(fonts.REQUIRED_CHARACTERS - set(MISSING))
    font = TTFont(str(DEJAVU))
    subsetter = subset.Subsetter(subset.Options())
    subsetter.populate(unicodes=[ord(char) for char in keep])
    subsetter.subset(font)
    path = tmp_path / "Partial.ttf"
    font.save(str(path))
    return path


def _ink(face: FontFace, weight: float | None, text: str = "Hamburg", size: int = 40) -> int:
    """Number of fully inked pixels (anti-aliased edges counted fractionally) of ``text`` drawn in ``face``."""
    image = Image.new("L", (size * len(text), size * 2))
    ImageDraw.Draw(image).text((size // 2, size // 2), text, font=load_font(face, size, weight), fill=255)
    return int(np.asarray(image, np.int64).sum() // 255)


def test_discovery_spans_families_and_categories(faces: list[FontFace]) -> None:
    families = {face.family for face in faces}
    assert len(families) >= 50
    categories = {face.category for face in faces}
    assert {"serif", "sans", "slab", "condensed", "display", "monospace", "handwriting"} <= categories
    assert categories <= set(CATEGORIES)
    assert {face.licence for face in faces} <= LICENCES
    by_family = {face.family: face for face in faces}
    assert by_family["Roboto Slab"].category == "slab" and by_family["Arvo"].category == "slab"
    assert by_family["Bebas Neue"].category == "condensed" and by_family["Oswald"].category == "condensed"
    assert by_family["Inconsolata"].category == "monospace"
    assert by_family["DejaVu Sans Mono"].source == "matplotlib"
    assert not any("Display" in Path(face.path).name for face in faces if face.source == "matplotlib")
    assert all(face.source.startswith("fontpkg-") for face in faces if face.source != "matplotlib")


def test_variable_fonts_are_one_face_with_weight_axis(faces: list[FontFace]) -> None:
    roboto = [face for face in faces if face.family == "Roboto"]
    assert sorted(face.style for face in roboto) == ["italic", "regular"]
    assert all(face.weight_axis == (100.0, 900.0) for face in roboto)
    lato = {face.style: face for face in faces if face.family == "Lato"}
    assert {"regular", "bold", "italic", "bold italic", "thin"} <= set(lato)
    assert all(face.weight_axis is None for face in lato.values())


def test_every_face_renders_and_covers_latin(faces: list[FontFace]) -> None:
    for face in faces:
        assert fonts.REQUIRED_CHARACTERS <= covered_characters(face.path), face
        font = load_font(face, 24)
        left, top, right, bottom = font.getbbox("Aa0")
        assert right > left and bottom > top, face
        image = Image.new("L", (120, 60))
        ImageDraw.Draw(image).text((10, 10), "Aa0", font=font, fill=255)
        assert image.getbbox() is not None, face


def test_discovery_is_deterministic_and_unique(faces: list[FontFace]) -> None:
    assert discover_fonts() == faces
    assert faces == sorted(faces, key=lambda face: (face.source, face.path))
    assert len({face.path for face in faces}) == len(faces)


def test_fonts_dir_faces_are_added_and_uncovering_ones_skipped_with_warning(tmp_path: Path, partial_font: Path,
                                                                            faces: list[FontFace]) -> None:
    nested = tmp_path / "nested"
    nested.mkdir()
    shutil.copy(DEJAVU, nested / "Copy.TTF")
    (tmp_path / "notes.txt").write_text("not a font")
    with pytest.warns(UserWarning, match=rf"Partial\.ttf.*{MISSING}"):
        found = discover_fonts(tmp_path)
    user = [face for face in found if face.source == str(tmp_path)]
    assert [Path(face.path).name for face in user] == ["Copy.TTF"]
    assert user[0].family == "DejaVu Sans" and user[0].category == "sans" and user[0].licence == "user"
    assert user[0].style == "regular"
    assert len(found) == len(faces) + 1


def test_unparseable_file_raises_and_is_skipped(tmp_path: Path) -> None:
    bad = tmp_path / "Broken.otf"
    bad.write_bytes(b"\x00\x01\x00\x00garbage")
    with pytest.raises(ValueError, match="Broken.otf"):
        covered_characters(str(bad))
    with pytest.warns(UserWarning, match="Broken.otf"):
        discover_fonts(tmp_path)


def test_catalogue_covering_excludes_faces_lacking_a_character(partial_font: Path, faces: list[FontFace]) -> None:
    partial = FontFace(str(partial_font), "Partial", "regular", "sans", "user", "test")
    candidates = [*faces[:20], partial]
    catalogue = FontCatalogue(candidates)
    assert partial in catalogue.covering("abc 123")
    without = list(catalogue.covering("xyz"))
    assert partial not in without and without == faces[:20]
    assert list(catalogue.covering("xyz")) == without  # the cached answer
    assert list(catalogue.covering("A" + UNASSIGNED)) == []
    assert list(catalogue.covering(" \t\n")) == candidates
    assert len(catalogue) == len(candidates) and catalogue[-1] == partial and list(catalogue) == candidates
    euro = FontCatalogue(faces).covering("€5")
    assert euro and all("€" in covered_characters(face.path) for face in euro)


def test_missing_fonts_dir_raises(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-fonts"
    with pytest.raises(FileNotFoundError, match="no-such-fonts"):
        discover_fonts(missing)


def test_nothing_found_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fonts, "_fontpkg_faces", list)
    monkeypatch.setattr(fonts, "_matplotlib_faces", list)
    with pytest.raises(FileNotFoundError, match="requirements-fonts.txt"):
        discover_fonts(tmp_path)


def test_variable_weight_changes_ink_and_static_ignores_it(faces: list[FontFace]) -> None:
    variable = next(face for face in faces if face.family == "Roboto" and face.style == "regular")
    low, high = variable.weight_axis
    light, bold = _ink(variable, low), _ink(variable, high)
    assert bold > 1.5 * light
    default = _ink(variable, None)
    assert light < default < bold
    assert _ink(variable, high + 1000) == bold  # clamped to the axis
    assert _ink(variable, None) == default  # the shared font object is reset on every call
    static = next(face for face in faces if face.weight_axis is None and face.family == "DejaVu Sans")
    assert _ink(static, 100) == _ink(static, 900)


def test_font_table_and_markdown(faces: list[FontFace], capsys: pytest.CaptureFixture[str]) -> None:
    rows = font_table(faces)
    assert len(rows) == len({(face.family, face.source) for face in faces})
    assert sum(int(row["styles"]) for row in rows) == len(faces)
    assert set(rows[0]) == {"family", "category", "styles", "licence", "source"}
    text = markdown_font_table(faces)
    assert f"**{len(rows)} families, {len(faces)} faces**" in text
    assert "| Lora | serif | 2 | OFL-1.1 | fontpkg-lora |" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fonts.main([])
    assert capsys.readouterr().out.strip() == markdown_font_table(fonts.default_catalogue().faces)


def test_default_catalogue_drops_hairline_static_faces(faces: list[FontFace]) -> None:
    catalogue = fonts.default_catalogue()
    dropped = set(faces) - set(catalogue.faces)
    assert dropped and all(face.weight_axis is None and fonts.weight_class(face.path) < 300 for face in dropped)
    assert {face.family for face in catalogue.faces} == {face.family for face in faces}  # no family lost
    matplotlib_only = fonts.default_catalogue(fonts.FontOptions(font_set="matplotlib"))
    assert matplotlib_only.faces and all(face.source == "matplotlib" for face in matplotlib_only.faces)
    with pytest.raises(ValueError, match="font set"):
        fonts.default_catalogue(fonts.FontOptions(font_set="nope"))
