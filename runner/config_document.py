"""Reading a settings or policy document: YAML (keys given once) or TOML, to its top-level mapping.

Apart from ``runner.config`` because the policy file and the benchmark read documents the same way and want
none of the settings models; what a wrong document raises, ``ConfigError``, lives here with the reading.
"""

from __future__ import annotations

import errno
import os
import stat
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


MAX_DOCUMENT_BYTES = 4 * 1024**2
"""A settings or policy file is KiB; anything past this is the wrong file, and is not read into memory whole."""


def _read_capped(path: Path, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``MAX_DOCUMENT_BYTES``; ConfigError otherwise.

    Opened without blocking (a FIFO would wait for a writer) and checked on the open descriptor, so a device
    (``/dev/zero``), pipe or directory is refused before a byte is read, and a file growing meanwhile is cut.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"cannot read {what} {path}: {os.strerror(errno.EISDIR)}")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"cannot read {what} {path}: not a regular file (a device, pipe or socket); name the "
                              "file itself")
        with os.fdopen(fd, "rb", closefd=False) as file:
            raw = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_DOCUMENT_BYTES // 1024**2} MiB: a settings or policy "
                          "file is a few KiB; is it the right file?")
    return raw


def read_document(path: Path, what: str) -> dict[str, Any]:
    """A YAML (or, for ``.toml``, TOML) file's top-level mapping; ConfigError naming ``what`` and the file."""
    kind = "TOML" if path.suffix == ".toml" else "YAML"
    raw = _read_capped(path, what)
    try:
        text = raw.decode("utf-8")
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
