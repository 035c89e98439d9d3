"""The layout of hpacli, checked mechanically (no code runs: imports are read with ``ast``).

* Layers: each top-level module or subpackage of ``hpacli`` has a layer; an import (at
  module level or inside a function) may only point to the same or a lower layer.
* No cycle between top-level modules/subpackages (``pm`` and ``registry`` used to import
  each other).
* Only ``hpacli/store/`` knows the store layout: no other module calls the store's raw
  methods (``attrs``, ``array``, ``has``, ``update_attrs``, ...), names a store key
  (``"cells/..."``, ``"images/..."``, ...) or opens a stage record under a literal key.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hpacli"

# lowest first; an area may import its own layer or any lower one
LAYERS: list[set[str]] = [
    {"(top)", "errors", "classes", "plaindata", "progress", "outpaths", "hookspecs", "summary", "plugin_types"},
    {"io", "pm", "registry"},
    {"store"},
    {"models", "data"},
    {"infer", "segment", "evaluate", "prep"},
    {"train", "label", "predict"},
    {"review", "demo", "doctor"},
    {"cli", "builtin"},
]
STORE_METHODS = {"attrs", "update_attrs", "array", "has", "group", "create_array", "ensure_array", "delete",
                 "require_rows", "missing_rows", "lost_rows", "covered_rows", "lock", "check_stamp"}
STORE_NAMES = {"store", "st", "self.store", "self._store", "store()"}
KEY = re.compile(r"^(cells|images|segment|labels|predictions|denoise|folds|dedup|negatives|truth|ingest)(/|$)")


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        yield path, parts, is_pkg, ast.parse(path.read_text())


def _area(parts: list[str]) -> str:
    return parts[1] if len(parts) > 1 else "(top)"


def _imports(parts, is_pkg, tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "hpacli":
                names = [target] if target != "hpacli" else [f"hpacli.{a.name}" for a in node.names]
                for t in names:
                    yield node.lineno, t
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "hpacli":
                    yield node.lineno, a.name


def _layer_of(area: str) -> int:
    for i, layer in enumerate(LAYERS):
        if area in layer:
            return i
    raise AssertionError(f"hpacli/{area} has no layer in tests/test_layers.py: give it one")


def _graph():
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for path, parts, is_pkg, tree in _modules():
        src = _area(parts)
        edges.setdefault(src, set())
        for line, target in _imports(parts, is_pkg, tree):
            tparts = target.split(".")
            dst = tparts[1] if len(tparts) > 1 else "(top)"
            if dst == "(top)" or dst in ("__version__", "hookimpl"):  # hpacli's own __init__: version, hookimpl
                dst = "(top)"
            if not (ROOT / dst).exists() and not (ROOT / f"{dst}.py").exists():
                dst = "(top)"  # `from hpacli import name`: a name of the package itself
            if dst != src:
                edges[src].add(dst)
                where.setdefault((src, dst), f"{path.relative_to(ROOT.parent)}:{line}")
    return edges, where


def test_every_area_has_a_layer():
    areas = {_area(parts) for _, parts, _, _ in _modules()}
    for area in areas:
        _layer_of(area)


def test_imports_point_down():
    edges, where = _graph()
    upward = [f"{where[(a, b)]}: {a} (layer {_layer_of(a)}) imports {b} (layer {_layer_of(b)})"
              for a, targets in edges.items() for b in targets if _layer_of(b) > _layer_of(a)]
    assert not upward, "\n".join(upward)


def test_no_cycle_between_areas():
    edges, where = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if state.get(node) is None:
            cycle = visit(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle) + " (" + ", ".join(
                where[(a, b)] for a, b in zip(cycle, cycle[1:])) + ")"


def _outside_store():
    for path, parts, _, tree in _modules():
        if len(parts) > 1 and parts[1] == "store":
            continue
        yield path, tree


def test_only_store_knows_keys_and_attributes():
    found = []
    for path, tree in _outside_store():
        rel = path.relative_to(ROOT.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = ast.unparse(node.func.value)
                if node.func.attr in STORE_METHODS and receiver in STORE_NAMES:
                    found.append(f"{rel}:{node.lineno}: {ast.unparse(node.func)}(...)")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "begin_stage":
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    found.append(f"{rel}:{node.lineno}: begin_stage under the literal key {node.args[1].value!r}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value \
                    and KEY.match(node.value):
                found.append(f"{rel}:{node.lineno}: store key {node.value!r}")
            if isinstance(node, ast.JoinedStr):
                head = node.values[0] if node.values else None
                if isinstance(head, ast.Constant) and isinstance(head.value, str) and KEY.match(head.value) \
                        and "/" in head.value:
                    found.append(f"{rel}:{node.lineno}: store key {ast.unparse(node)}")
    assert not found, "store layout outside hpacli/store/:\n" + "\n".join(found)


@pytest.mark.parametrize("text, bad", [
    ('store.attrs("cells")', True), ('st.array("images/height")', True), ('x = "segment/cells"', True),
    ('begin_stage(store, "ingest", "ingest", {})', True), ('store.images.ids()', False),
    ('table.lock()', False), ('df.attrs.get("x")', False), ('units = "cells"', False),
])
def test_the_checker_sees_what_it_should(tmp_path, monkeypatch, text, bad):
    """The key checker itself: it flags raw access and keys, not the store's reader API."""
    mod = tmp_path / "hpacli" / "stage_x.py"
    mod.parent.mkdir()
    mod.write_text(text + "\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path / "hpacli")
    if bad:
        with pytest.raises(AssertionError):
            test_only_store_knows_keys_and_attributes()
    else:
        test_only_store_knows_keys_and_attributes()
