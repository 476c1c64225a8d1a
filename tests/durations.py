"""How long each test file takes, so that pytest-xdist hands out the longest files first.

With `--dist loadfile` (pyproject.toml) a file runs on one worker from its first test to its last, and the run
ends when the last file does. xdist hands files out in collection order (with `--no-loadscope-reorder`; its own
reorder is by number of tests, which puts a file of three tests against a fleet of real servers, over a minute,
at the very end while the other workers sit idle). tests/conftest.py orders the collected files by the seconds
recorded in durations.json, longest first (a file not recorded there counts as DEFAULT_S); tests keep their order
within a file. Only when each file runs changes, never what a test does.

Refresh it after adding or slowing down tests (any run's junit report will do):

    .venv/bin/python -m pytest --junitxml=/tmp/junit.xml
    .venv/bin/python -m tests.durations /tmp/junit.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_S = 5.0  # a file not in durations.json (a new one): about a typical file


def recorded() -> dict[str, float]:
    """Seconds per test file (its path from the repository root); empty when the file is missing or unreadable."""
    try:
        data = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {str(path): float(seconds) for path, seconds in data.items()} if isinstance(data, dict) else {}


def longest_first(items: Sequence[pytest.Item]) -> list[pytest.Item]:
    """`items` with whole files ordered by recorded seconds, longest first; a file's tests keep their order."""
    seconds = recorded()
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    files = sorted(by_file, key=lambda path: -seconds.get(path, DEFAULT_S))  # stable: ties keep collection order
    return [item for path in files for item in by_file[path]]


def file_seconds(junit_xml: Path) -> dict[str, float]:
    """Seconds per test file in a pytest junit report (setup, call and teardown of every test)."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        path = _module_path(case.get("classname", ""))
        if path is not None:
            totals[path] += float(case.get("time", 0.0))
    return dict(totals)


def _module_path(classname: str) -> str | None:
    """tests.api.test_server (or tests.x.test_y.TestClass) -> tests/api/test_server.py, when that file exists."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        path = "/".join(parts[:end]) + ".py"
        if (REPO_ROOT / path).is_file():
            return path
    return None


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m tests.durations JUNIT_XML")
    seconds = file_seconds(Path(argv[0]))
    DURATIONS.write_text(json.dumps({path: round(s, 1) for path, s in sorted(seconds.items())}, indent=1) + "\n")
    print(f"wrote {len(seconds)} files, {sum(seconds.values()):.0f} s in all, to {DURATIONS}")


if __name__ == "__main__":
    main(sys.argv[1:])
