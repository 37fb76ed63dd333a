"""Config style (STYLE.md section 3): short ``$`` expressions, components with named arguments instead, and no
list position in an id (``handlers#1#_disabled_``): an optional part is switched off by a named flag."""

from __future__ import annotations

import json
import re

import pytest

from conftest import BUNDLE_ROOT

CONFIGS = sorted((BUNDLE_ROOT / "configs").rglob("*.json"))
MAX_EXPRESSION = 100
POSITIONAL_ID = re.compile(r"handlers#\d")


def _walk(node, path: str = ""):
    """Every (id, key or string value) below ``node``: dict keys as written, and string values."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}{key}", key
            yield from _walk(value, f"{path}{key}#")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}{index}#")
    elif isinstance(node, str):
        yield path.rstrip("#"), node


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(BUNDLE_ROOT)))
def test_expressions_are_short(config):
    long = [(i, len(s)) for i, s in _walk(json.loads(config.read_text()))
            if s.startswith("$") and len(s) > MAX_EXPRESSION]
    assert not long, f"write these as _target_ components with named arguments: {long}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(BUNDLE_ROOT)))
def test_no_handler_addressed_by_position(config):
    positional = [text for _, text in _walk(json.loads(config.read_text())) if POSITIONAL_ID.search(text)]
    assert not positional, f"use a named flag (e.g. _disabled_ referencing an id) instead: {positional}"
