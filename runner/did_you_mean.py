"""Unknown keys in a settings or policy file, answered with the closest key the file may have meant.

pydantic's ``extra="forbid"`` says only "Extra inputs are not permitted"; a person who wrote ``mount:`` for
``mounts:`` needs the right spelling. The keys allowed at a place are read from the model itself, following the
error's location down through nested models, mappings (``profiles.<name>``) and lists (``mounts.<index>``), so
every nesting level gets a suggestion without a list kept by hand.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

_CUTOFF = 0.6
"""difflib's similarity ratio a known key must reach to be suggested (``mount`` → ``mounts`` is 0.91)."""
_MAX_LISTED = 12
"""With no close match, the keys allowed here are listed, up to this many."""


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _unwrapped(annotation: Any) -> list[Any]:
    """The types an annotation may hold: ``X | None`` gives X, ``Annotated[X, ...]`` gives X."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrapped(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [t for arg in typing.get_args(annotation) for t in _unwrapped(arg) if t is not type(None)]
    return [annotation]


def _step(annotation: Any, part: str | int) -> Any | None:
    """The annotation one location part further down, or None where the location leaves what is known."""
    for candidate in _unwrapped(annotation):
        origin = typing.get_origin(candidate)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            info = next((i for n, i in candidate.model_fields.items() if part in (n, i.alias)), None)
            if info is not None:
                return info.annotation
        elif origin is dict and isinstance(part, str):
            return typing.get_args(candidate)[1]
        elif origin is list and isinstance(part, int):
            return typing.get_args(candidate)[0]
    return None


def allowed_keys(model: type[BaseModel], parent: Sequence[str | int]) -> list[str]:
    """The keys a mapping at ``parent`` (a pydantic error location) may have; empty when it cannot be told."""
    annotation: Any = model
    for part in parent:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    models = [t for t in _unwrapped(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
    return _keys(models[0]) if models else []


def closest(word: str, candidates: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(word.lower(), candidates, n=1, cutoff=_CUTOFF)
    return matches[0] if matches else None


def unknown_key_message(model: type[BaseModel], loc: Sequence[str | int], said: str) -> str:
    """pydantic's message for an unknown key at ``loc``, with the key meant (or the keys allowed there)."""
    if not loc:
        return said
    keys = allowed_keys(model, loc[:-1])
    if not keys:
        return f"{said} (unknown key)"
    meant = closest(str(loc[-1]), keys)
    if meant is not None:
        return f"{said} (unknown key); did you mean `{meant}`?"
    listed = ", ".join(sorted(keys)[:_MAX_LISTED]) + (", …" if len(keys) > _MAX_LISTED else "")
    return f"{said} (unknown key); the keys here are: {listed}"
