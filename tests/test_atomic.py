"""scripts.common.atomic.replace_marked_block: generated blocks of docs are replaced in place, the prose around them kept."""

from __future__ import annotations

import pytest

from scripts.common.atomic import replace_marked_block

BEGIN, END = "<!-- gen:begin -->", "<!-- gen:end -->"


def test_block_replaced_and_text_around_it_kept(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\nintro\n{BEGIN}\nold table\n{END}\nfindings\n")
    replace_marked_block(doc, BEGIN, END, "new table")
    assert doc.read_text() == f"# Title\nintro\n{BEGIN}\nnew table\n{END}\nfindings\n"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.md"]  # no temporary file left


def test_missing_markers_append_or_refuse(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("prose only\n")
    with pytest.raises(ValueError, match="doc.md: markers .* not found"):
        replace_marked_block(doc, BEGIN, END, "x", append_if_missing=False)
    assert doc.read_text() == "prose only\n"
    replace_marked_block(doc, BEGIN, END, "x")
    assert doc.read_text() == f"prose only\n\n{BEGIN}\nx\n{END}\n"
    new = tmp_path / "sub" / "new.md"
    replace_marked_block(new, BEGIN, END, "y", title="# Generated\n\n")
    assert new.read_text() == f"# Generated\n\n{BEGIN}\ny\n{END}\n"
