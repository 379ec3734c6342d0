"""The mutation check's list (tests/mutants.py) stays in step with the code: each mutant still
applies, once, and names tests that exist. Running the mutants themselves takes minutes: not here."""
from __future__ import annotations

import pytest

from conftest import REPO
from mutants import MUTANTS, Mutant, StaleMutant, mutate


@pytest.mark.parametrize("m", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_applies_once_and_names_existing_tests(m):
    mutate(m, REPO, write=False)
    for node in m.tests:
        path, _, name = node.partition("::")
        text = (REPO / path).read_text()
        assert not name or f"def {name.split('[')[0]}(" in text, node


def test_names_are_unique_and_a_stale_mutant_is_refused():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    with pytest.raises(StaleMutant, match="is in training/loop.py 0 times, expected once"):
        mutate(Mutant("gone", "training/loop.py", "no such line", "x", ()), REPO, write=False)
