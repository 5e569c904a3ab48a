"""The layers import in one direction only: http -> replica -> consensus, never back.

Read from the source (ast), not by importing: a test of the structure must not
depend on what happens to be imported already.  Each rule names the packages a
layer may not import; the folders' docstrings say the same in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer (a package or module path) -> prefixes it must never import
FORBIDDEN = {
    "consensus": ("node", "ui", "tui", "bench"),
    "node/replica": (
        "node.http",
        "node.execution",
        "node.cli",
        "node.client",
        "node.runtime",
        "node.gossip",
        "node.rag",
        "ui",
        "tui",
        "aiohttp",
    ),
    "node/http": ("consensus", "node.execution", "node.cli", "node.runtime", "ui", "tui"),
    "node/execution": ("consensus", "node.http", "node.cli", "node.runtime", "ui", "tui"),
    "node/rag": (
        "consensus",
        "node.http",
        "node.execution",
        "node.cli",
        "node.runtime",
        "node.replica.replica",
        "node.replica.state",
        "ui",
        "tui",
    ),
    # (the CLI may launch the terminal UI, and makes CURVE keys with consensus' key helpers)
    "node/cli": (
        "consensus.driver",
        "consensus.raft",
        "node.http.tasks",
        "node.http.app",
        "node.execution",
        "ui",
    ),
    "node/client": (
        "consensus",
        "node.execution",
        "node.runtime",
        "node.replica.replica",
        "ui",
        "tui",
    ),
    "node/gossip": ("consensus.driver", "node.replica", "node.http", "node.execution", "ui", "tui"),
    "ui": (
        "consensus",
        "node.replica.replica",
        "node.replica.state",
        "node.execution",
        "node.runtime",
    ),
    "tui": (
        "consensus",
        "node.replica.replica",
        "node.replica.state",
        "node.execution",
        "node.runtime",
        "ui",
    ),
}
# Only the composition root builds the Raft driver.
DRIVER_USERS = {"node/runtime/main.py", "node/replica/replica.py"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def files_of(layer: str) -> list[Path]:
    base = ROOT / layer
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def _hits(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_the_layer_imports_only_downwards(layer):
    wrong = []
    for path in files_of(layer):
        for line, name in imports_of(path):
            if _hits(name, FORBIDDEN[layer]):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_only_the_composition_root_and_the_replica_use_the_raft_driver():
    users = set()
    for path in (ROOT / "node").rglob("*.py"):
        for _, name in imports_of(path):
            if name == "consensus.driver":
                users.add(str(path.relative_to(ROOT)))
    assert users <= DRIVER_USERS, sorted(users - DRIVER_USERS)


def test_commands_are_built_as_dataclasses_not_dicts():
    """The one wire form lives in the codec: no {"op": ...} map anywhere else in node/."""
    offenders = []
    for path in (ROOT / "node").rglob("*.py"):
        if path == ROOT / "node" / "replica" / "codec.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if '"op":' in line or "'op':" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_folder_says_what_lives_there_and_what_it_may_import():
    for layer in (
        "node/replica",
        "node/http",
        "node/execution",
        "node/cli",
        "node/client",
        "node/runtime",
    ):
        doc = ast.get_docstring(ast.parse((ROOT / layer / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"{layer}/__init__.py needs a docstring"
    for layer in ("node/replica", "node/http", "node/execution", "node/cli", "node/client"):
        doc = ast.get_docstring(ast.parse((ROOT / layer / "__init__.py").read_text()))
        assert "import" in doc, f"{layer}/__init__.py: say what it may import"
