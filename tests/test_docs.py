"""The documentation agrees with the code: links, variables, exceptions, commands, examples.

Docs are part of the feature: a variable, exception or subcommand named in them that
the code does not have sends an operator after something that does not exist.
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import re
from pathlib import Path

import pytest

from redis_cache import config, exceptions
from redis_cache.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
COMPILED_PAGES = [ROOT / "docs" / "quickstart.md", ROOT / "docs" / "concepts.md"]

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
VARIABLE = re.compile(r"\bREDIS_CACHE_[A-Z0-9_]*[A-Z0-9]\b")
EXCEPTION = re.compile(r"\b[A-Z][A-Za-z]+Error\b")
SUBCOMMAND = re.compile(r"\bredis-cache[ \t]+([a-z][a-z-]*)")

# Exceptions the docs quote that live outside redis_cache.exceptions: in the message
# texts of the Redis layer (redis-py's class names) or in a module of their own.
# Each must exist where it is said to be.
ELSEWHERE = {
    "NoPermissionError": "redis.exceptions",
    "AuthenticationError": "redis.exceptions",
    "OutOfMemoryError": "redis.exceptions",
    "ReplyTooLargeError": "redis_cache.wire",
    "ReplyTimeoutError": "redis_cache.wire",
    "TLSMismatchError": "redis_cache.wire",
}


def split_code(text: str) -> tuple[str, list[tuple[str, str, int]]]:
    """Prose with fenced blocks blanked out, and the blocks as (language, source, line)."""
    prose: list[str] = []
    blocks: list[tuple[str, str, int]] = []
    fence: str | None = None
    language = ""
    body: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, language, body, start = match.group(1), match.group(2), [], number + 1
            prose.append("")
        elif fence is not None and is_closing(line, fence):
            blocks.append((language, "\n".join(body) + "\n", start))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, "unclosed code fence"
    return "\n".join(prose), blocks


def is_closing(line: str, fence: str) -> bool:
    """A closing fence: the opening character only, at least as many of it."""
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def link_targets(path: Path) -> list[str]:
    prose, _ = split_code(path.read_text())
    prose = INLINE_CODE.sub("", prose)
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def exception_types(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    return {
        name
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }


def subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("redis-cache has no subcommands")


def test_the_pages_exist() -> None:
    expected = {
        "index", "quickstart", "concepts", "configuration", "architecture", "deterministic",
        "consistency", "operations", "security", "migrating", "troubleshooting",
    }  # fmt: skip
    assert expected <= {p.stem for p in DOCS}


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_relative_links_point_to_existing_files(path: Path) -> None:
    problems = []
    for target in link_targets(path):
        if SCHEME.match(target):
            continue  # http(s), mailto: not checked here
        if "#" in target:
            problems.append(f"{target}: anchors break silently when a heading changes")
            continue
        if not (path.parent / target).resolve().exists():
            problems.append(f"{target}: no such file")
    assert problems == [], f"{page_id(path)}: {problems}"


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_variable_named_is_a_real_setting(path: Path) -> None:
    named = set(VARIABLE.findall(path.read_text()))
    assert named - set(config.DEFAULTS) == set(), page_id(path)


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_exception_named_exists(path: Path) -> None:
    ours = exception_types("redis_cache.exceptions")
    builtin = {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    unknown = set()
    for name in set(EXCEPTION.findall(path.read_text())):
        if name in ours or name in builtin:
            continue
        module = ELSEWHERE.get(name)
        if module is None or name not in exception_types(module):
            unknown.add(name)
    assert unknown == set(), page_id(path)


def test_exceptions_listed_elsewhere_are_not_in_the_public_hierarchy_by_mistake() -> None:
    # If one of them moves into redis_cache.exceptions, drop it from ELSEWHERE.
    assert set(ELSEWHERE) & exception_types("redis_cache.exceptions") == set()
    assert issubclass(exceptions.RemoteError, exceptions.RemoteUnavailableError)


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_subcommand_named_exists(path: Path) -> None:
    named = set(SUBCOMMAND.findall(path.read_text()))
    assert named - subcommands() == set(), page_id(path)


@pytest.mark.parametrize("path", COMPILED_PAGES, ids=page_id)
def test_python_examples_compile(path: Path) -> None:
    _, blocks = split_code(path.read_text())
    examples = [(source, line) for language, source, line in blocks if language == "python"]
    assert examples, f"{page_id(path)} has no python examples"
    for source, line in examples:
        compile(source, f"{page_id(path)}:{line}", "exec")


def test_the_checks_catch_what_they_should() -> None:
    text = (
        "See [a](missing.md), [b](index.md#intro) and [c](https://example.com).\n"
        "`[not a link](nowhere.md)`\n"
        "```sh\n[in a block](nowhere.md)\nredis-cache frobnicate\n```\n"
        "Set REDIS_CACHE_NOPE, not REDIS_CACHE_*; catch FrobnicationError.\n"
        "Run redis-cache doctor, not redis-cache-demo-dir.\n"
    )
    prose, blocks = split_code(text)
    prose = INLINE_CODE.sub("", prose)
    assert INLINE_LINK.findall(prose) == ["missing.md", "index.md#intro", "https://example.com"]
    assert blocks == [("sh", "[in a block](nowhere.md)\nredis-cache frobnicate\n", 4)]
    assert VARIABLE.findall(text) == ["REDIS_CACHE_NOPE"]
    assert EXCEPTION.findall(text) == ["FrobnicationError"]
    assert SUBCOMMAND.findall(text) == ["frobnicate", "doctor"]
