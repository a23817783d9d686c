"""Catalog `aliases` (model ids such as fal-ai/fast-sdxl served by a local entry), as async-invoke
resolves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from infergate.catalog import Catalog, CatalogError

ENTRY = """
[[models]]
id = "{id}"
kind = "tts"
backend = "espeak"
aliases = {aliases}
"""


def load(tmp_path: Path, *entries: tuple[str, str]) -> Catalog:
    path = tmp_path / "catalog.toml"
    path.write_text("builtins = false\n" + "".join(ENTRY.format(id=i, aliases=a) for i, a in entries))
    return Catalog.load(str(path), tmp_path)


def test_an_alias_resolves_to_its_entry(tmp_path: Path) -> None:
    catalog = load(tmp_path, ("espeak-tts", '["fal-ai/elevenlabs/tts/multilingual-v2", "tts@v1"]'))
    spec = catalog.get("fal-ai/elevenlabs/tts/multilingual-v2")
    assert spec is not None and spec.id == "espeak-tts"
    assert catalog.get("tts@v1") is spec and catalog.get("espeak-tts") is spec
    assert catalog.get("fal-ai/elevenlabs") is None
    assert [s.id for s in catalog] == ["espeak-tts"]  # aliases are not listed as models


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((("a", '["b"]'), ("b", "[]")), "'b' is already used by 'b'"),
        ((("a", '["x/y"]'), ("b", '["x/y"]')), "'x/y' is already used by 'a'"),
        ((("a", '["/leading-slash"]'),), "aliases"),
        ((("a", '["has space"]'),), "aliases"),
        ((("a", '"not-a-list"'),), "aliases"),
    ],
)
def test_bad_aliases_stop_the_load_naming_the_field(
    tmp_path: Path, entries: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(CatalogError, match="aliases") as info:
        load(tmp_path, *entries)
    assert message in str(info.value)
