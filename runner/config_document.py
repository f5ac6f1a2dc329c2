"""Reading a settings or policy document: YAML (keys given once) or TOML, to its top-level mapping.

Apart from ``runner.config`` because the policy file and the benchmark read documents the same way and want
none of the settings models; what a wrong document raises, ``ConfigError``, lives here with the reading.
"""

from __future__ import annotations

import tomllib
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from runner.errors import InvalidArgument


class ConfigError(InvalidArgument):
    """The settings file or environment is wrong; the message names the file and field."""



class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (TOML does already).

    PyYAML keeps the last of two ``alice:`` blocks without a word, so a caller's rules written twice in a
    policy (say, a restricted block added above an old permissive one) would silently be the later block's.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges may be overridden by the mapping's own keys, as YAML intends
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it, with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found key {key!r} twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _one_line(exc: Exception) -> str:
    """A parser's complaint on one line: PyYAML's spans several (context, the offending line, a caret), which
    broke a refused reload's log entry across lines and echoed a line of the file into the log."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f"{exc.context}: " if exc.context else ""
        return f"{context}{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def read_document(path: Path, what: str) -> dict[str, Any]:
    """A YAML (or, for ``.toml``, TOML) file's top-level mapping; ConfigError naming ``what`` and the file."""
    kind = "TOML" if path.suffix == ".toml" else "YAML"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8: {exc}") from exc
    try:
        data = tomllib.loads(text) if kind == "TOML" else yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path} is not valid {kind}: {_one_line(exc)}") from exc
    except RecursionError as exc:
        # Both parsers recurse per level of nesting: a file of thousands of '[' must be refused like any other
        # broken file (a reload keeps the policy in force), not escape as a traceback that ends a start or reload.
        raise ConfigError(f"{what} {path} is not valid {kind}: nested too deeply") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: the top level must be a mapping")
    return data
