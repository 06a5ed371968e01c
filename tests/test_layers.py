"""The layering DESIGN.md draws, kept by reading every import of every module.

The core (inspection, policy, actions, quarantine storage) is pure logic and storage:
it must never reach up into the application layer or an entry point, or a second
front-end and the review UI could no longer share it. Function-level imports count
too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "milter"
CORE = ("milter.inspect", "milter.policy", "milter.actions", "milter.quarantine")
ABOVE_CORE = (
    "milter.app",
    "milter.commands",
    "milter.cli",
    "milter.smtp",
    "milter.milterproto",
    "milter.review",
    "milter.__main__",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code, as absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    package = (
        module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    )
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value)
    return out


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


CORE_FILES = sorted(p for p in PACKAGE.rglob("*.py") if under(module_name(p), CORE))


def test_the_core_is_all_there() -> None:
    names = {module_name(p) for p in CORE_FILES}
    assert {"milter.inspect.scan", "milter.policy.engine", "milter.actions.rewrite"} <= names
    assert {"milter.quarantine.store", "milter.quarantine.sql"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=module_name)
def test_core_never_imports_the_application_or_an_entry_point(path: Path) -> None:
    bad = sorted(n for n in imports_of(path) if under(n, ABOVE_CORE))
    assert not bad, f"{module_name(path)} imports {bad}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The guard must fail where it should: imports inside functions and relative
    imports count."""
    global PACKAGE
    root = tmp_path / "milter"
    (root / "policy").mkdir(parents=True)
    probe = root / "policy" / "engine.py"
    probe.write_text(
        "import importlib\n"
        "def f():\n"
        "    from milter.app.pipeline import Pipeline\n"
        "    from ..smtp import proxy\n"
        "    importlib.import_module('milter.review.routes')\n"
    )
    saved, PACKAGE = PACKAGE, root
    try:
        found = imports_of(probe)
    finally:
        PACKAGE = saved
    assert {"milter.app.pipeline", "milter.smtp.proxy", "milter.review.routes"} <= found
    assert all(under(n, ABOVE_CORE) for n in found if n.startswith("milter."))


def test_entry_points_reach_the_core_through_the_application() -> None:
    """The CLI registers its commands by import, not by strings it could not check."""
    cli = imports_of(PACKAGE / "cli.py")
    assert "milter.commands.serve" in cli and "milter.commands.quarantine" in cli
