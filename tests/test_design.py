"""The rules docs/DESIGN.md states about the code's shape, checked against the code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# the schedule, parsers, file walk and exporter run where torch is not installed (a login node, a laptop);
# the header reader starts a process per core for a first index, each in a fraction of a second;
# `bench project` gives a run's time before the GPUs are rented, with validation batched as rectval does
TORCH_FREE = ("training.phases", "training.bounded", "training.files", "training.config", "training.cli",
              "training.resize", "training.headers", "training.orphans", "training.refusal", "training.data.rectval",
              "training.bench.project", "dawn.events", "dawn.prepare_dawn_tsv")

_BLOCK_TORCH = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ImportError('torch is blocked: ' + name)
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
"""


def test_the_schedule_parsers_and_exporter_import_without_torch():
    proc = subprocess.run([sys.executable, "-c", _BLOCK_TORCH, *TORCH_FREE], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]


def _imports(path: Path) -> set[str]:
    return _imported(path.read_text(), ".".join(path.relative_to(REPO).parts[:-1]))


def _imported(source: str, package: str) -> set[str]:
    """Every module a source imports, absolute (relative imports resolved against its package)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", [p for p in _modules("training")
                                  if p.relative_to(REPO).parts[1] not in ("recipes", "bench", "train.py")],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_trainer_module_imports_a_recipe(path):
    assert not any(m.startswith("training.recipes") for m in _imports(path))


@pytest.mark.parametrize("path", _modules("training/data"), ids=lambda p: p.name)
def test_loaders_know_nothing_of_models(path):
    assert not any(m.startswith("training.models") for m in _imports(path))


def test_the_import_reader_sees_relative_and_absolute_imports():
    """The two checks above are only as good as the reader; pin it on known imports."""
    found = _imported("import training.models.cifar\nfrom ..recipes import cifar\nfrom . import tree\n",
                      "training.data")
    assert {"training.models.cifar", "training.recipes", "training.recipes.cifar", "training.data.tree"} <= found
