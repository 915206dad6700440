"""README.md: the tests its Reliability table names exist, so that a renamed test cannot leave a promise
pointing at nothing."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_reliability_table_names_exists():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Reliability")
    section = readme[start:readme.index("\n## ", start)]
    named = set(re.findall(r"`([\w/]+\.py)::(\w+)`", section))
    assert len(named) >= 10
    missing = [f"{path}::{name}" for path, name in sorted(named)
               if not re.search(rf"^\s*(def|class) {name}\b", (ROOT / "tests" / path).read_text(), re.M)]
    assert not missing, missing
