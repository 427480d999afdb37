"""The namedtuples on the warm token path are typed by a ``NamedTuple`` under ``if TYPE_CHECKING:``
that never runs; these tests keep the two alike: the same fields, in the same order, with
the same defaults."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import qlam_hpc

PACKAGE = Path(qlam_hpc.__file__).parent


def _typed_namedtuples() -> list[tuple[str, str, list[str], dict[str, object]]]:
    """``(module, class, fields, defaults)`` of each ``NamedTuple`` declared under ``if TYPE_CHECKING:``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(("qlam_hpc", *path.relative_to(PACKAGE).with_suffix("").parts))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                continue
            for statement in node.body:
                bases = [b.id for b in getattr(statement, "bases", []) if isinstance(b, ast.Name)]
                if not isinstance(statement, ast.ClassDef) or "NamedTuple" not in bases:
                    continue
                fields = [s for s in statement.body if isinstance(s, ast.AnnAssign)]
                names = [f.target.id for f in fields if isinstance(f.target, ast.Name)]
                defaults = {
                    f.target.id: _default(f.value, module.removesuffix(".__init__"))
                    for f in fields
                    if isinstance(f.target, ast.Name) and f.value is not None
                }
                found.append((module.removesuffix(".__init__"), statement.name, names, defaults))
    return found


def _default(node: ast.expr, module: str) -> object:
    """A default as written in the typed twin: a literal, or an expression of the module's own
    names (``DEFAULT_LOCK_TIMEOUT``, ``RetryPolicy()``) evaluated in the module that runs."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        expression = compile(ast.Expression(node), f"<default in {module}>", "eval")
        return eval(expression, vars(importlib.import_module(module)))


TYPED = _typed_namedtuples()


def test_the_warm_path_namedtuples_are_typed() -> None:
    """The token, the cache entry and its parts, the light path's answer, the settings (token,
    retry, API) and QLAM Shell's context and client have typed fields."""
    typed = {(module, name) for module, name, _, _ in TYPED}
    assert {
        ("qlam_hpc._tokens", "_TokenFields"),
        ("qlam_hpc._cache", "_CacheEntryFields"),
        ("qlam_hpc._api._light", "_AnswerFields"),
        ("qlam_hpc._settings", "_RetryFields"),
        ("qlam_hpc._settings", "_SettingsFields"),
        ("qlam_hpc._qsh", "_QshContextFields"),
        ("qlam_hpc._qsh", "_QshClientFields"),
        ("qlam_hpc._api._settings", "_ApiSettingsFields"),
    } <= typed


@pytest.mark.parametrize(("module", "name", "fields", "defaults"), TYPED, ids=[f"{m}.{n}" for m, n, _, _ in TYPED])
def test_typed_fields_match_the_namedtuple_that_runs(
    module: str, name: str, fields: list[str], defaults: dict[str, object]
) -> None:
    """What the type checker reads is what runs: the same fields and defaults."""
    runs = getattr(importlib.import_module(module), name)
    assert list(runs._fields) == fields
    assert runs._field_defaults == defaults
