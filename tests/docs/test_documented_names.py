"""Every metric, setting and command-line flag that README.md and docs/ name exists in the code.

Documentation drifts silently: a renamed metric leaves a dashboard recipe that returns nothing, a renamed
setting a variable that start-up now refuses. These tests read the pages and look every name up in the code.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from service.cli import build_parser
from service.serving.metrics import ServiceMetrics
from service.serving.settings import ENV_PREFIX, NOT_SETTINGS, Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Named on purpose although it is no setting: the misspelling that start-up refuses (README, Configuration).
TYPO_EXAMPLES = {"RANKER_MAX_CANDIDATE"}
COMMAND = re.compile(r"\branker (config set|config show|[a-z][a-z-]+)\b([^\n`|]*)")


def pages_text() -> dict[str, str]:
    return {page.relative_to(ROOT).as_posix(): page.read_text() for page in PAGES}


def exported_metric_names() -> set[str]:
    """Every family and sample name the service exports (counters' _total, histograms' _bucket/_sum/_count)."""
    metrics = ServiceMetrics()
    metrics.set_config_generation("default", 1)  # made on first use
    assert metrics.registry is not None
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count"))
    return names


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """'serve', 'config set', ... -> its parser."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(subcommands(sub, f"{prefix}{name} "))
    return found


@pytest.mark.parametrize("page", [page.relative_to(ROOT).as_posix() for page in PAGES])
def test_every_metric_a_page_names_is_exported(page: str) -> None:
    named = set(re.findall(r"\branker_[a-z_]+\b", pages_text()[page]))
    missing = named - exported_metric_names()
    assert not missing, f"{page} names metrics the service does not export: {sorted(missing)}"


@pytest.mark.parametrize("page", [page.relative_to(ROOT).as_posix() for page in PAGES])
def test_every_ranker_variable_a_page_names_is_a_setting(page: str) -> None:
    named = set(re.findall(r"\bRANKER_[A-Z0-9_]+\b", pages_text()[page]))
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | NOT_SETTINGS | TYPO_EXAMPLES
    assert not named - known, f"{page} names RANKER_* variables that are no setting: {sorted(named - known)}"


@pytest.mark.parametrize("page", [page.relative_to(ROOT).as_posix() for page in PAGES])
def test_every_flag_a_page_gives_a_ranker_command_exists(page: str) -> None:
    commands = subcommands(build_parser())
    wrong = []
    for command, rest in COMMAND.findall(pages_text()[page]):
        given = re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest)
        if command not in commands:  # prose ("the ranker and ..."), unless it gives flags
            wrong += [f"ranker {command} (no such command)"] if given else []
            continue
        flags = {option for action in commands[command]._actions for option in action.option_strings}
        wrong += [f"ranker {command} {flag}" for flag in given if flag not in flags]
    assert not wrong, f"{page} names command-line flags that do not exist: {sorted(set(wrong))}"


def test_the_readers_pages_are_read_at_all() -> None:
    """The checks above are only as good as their patterns: README must yield names of every kind."""
    readme = pages_text()["README.md"]
    assert len(set(re.findall(r"\branker_[a-z_]+\b", readme))) >= 5
    assert len(set(re.findall(r"\bRANKER_[A-Z0-9_]+\b", readme))) >= 10
    assert len([flags for _, flags in COMMAND.findall(readme) if "--" in flags]) >= 5
