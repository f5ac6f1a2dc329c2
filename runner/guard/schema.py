"""JSON Schema validators that are safe to build from an untrusted server's tool definitions.

Two things a stock jsonschema validator would let a hostile schema do on the host:

- ``$ref`` to ``http://…`` or ``file://…`` is retrieved by the default registry
  (requests from the host, host files read and echoed in messages). Here the
  registry is empty and retrieves nothing: such a ref fails validation.
- ``pattern`` / ``patternProperties`` run on Python's backtracking ``re``, which
  holds the GIL: ``^(a+)+$`` against a short string freezes the whole service.
  Here every schema-supplied pattern runs on the ``regex`` module with a time
  limit, inside one budget per validation.

jsonschema also matches ``patternProperties`` inside ``unevaluatedProperties``;
rather than re-implement that, a schema combining the two is refused.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import regex
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from runner.text import whole_words

PATTERN_TIMEOUT_S = 0.05
VALIDATION_BUDGET_S = 0.5
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("schema_deadline", default=0.0)
_NO_RETRIEVAL: Registry[Any] = Registry()


class UnsafeSchema(Exception):
    """The schema uses a construct the runner refuses to evaluate; the message says which."""


class ValidationTooSlow(Exception):
    pass


def short(text: str, limit: int = 160) -> str:
    """Untrusted text bounded for an error message, cut in whole words: the sanitizer the message passes next
    cannot recognize the part of a secret a cut leaves behind."""
    return text if len(text) <= limit else whole_words(text, limit) + f"… ({len(text)} chars)"


def _search(pattern: str, text: str) -> bool:
    remaining = _deadline.get() - time.monotonic()
    if remaining <= 0:
        raise ValidationTooSlow
    try:
        return regex.search(pattern, text, timeout=min(PATTERN_TIMEOUT_S, remaining)) is not None
    except TimeoutError:
        raise ValidationTooSlow from None
    except regex.error:
        return False


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{short(repr(instance), 80)} does not match {short(repr(pattern), 80)}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        key for key in instance
        if key not in properties and not any(_search(pattern, key) for pattern in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        names = ", ".join(short(repr(e), 40) for e in sorted(extras)[:5])
        verb = "was" if len(extras) == 1 else "were"
        yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def _uses(schema: Any, keyword: str) -> bool:
    if isinstance(schema, dict):
        return keyword in schema or any(_uses(v, keyword) for v in schema.values())
    if isinstance(schema, list):
        return any(_uses(v, keyword) for v in schema)
    return False


def compile_schema(schema: dict[str, Any]) -> Validator:
    """A validator for ``schema``; SchemaError if it is not valid JSON Schema, UnsafeSchema if refused."""
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    base.check_schema(schema)
    if _uses(schema, "unevaluatedProperties") and _uses(schema, "patternProperties"):
        raise UnsafeSchema(
            "it combines unevaluatedProperties with patternProperties, which the runner does not evaluate"
        )
    safe = jsonschema.validators.extend(  # type: ignore[no-untyped-call]  # the stubs leave extend untyped
        base,
        {"pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties},
    )
    validator: Validator = safe(schema, registry=_NO_RETRIEVAL)
    return validator


def first_error(validator: Validator, instance: Any) -> ValidationError | None:
    """The most relevant error, within the time budget.

    Raises UnsafeSchema when a ``$ref`` cannot be resolved locally (nothing is
    fetched) and ValidationTooSlow when the budget runs out.
    """
    token = _deadline.set(time.monotonic() + VALIDATION_BUDGET_S)
    try:
        error: ValidationError | None = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        return error
    except Unresolvable as exc:
        raise UnsafeSchema(f"it has a $ref the runner does not resolve ({short(str(exc), 120)}); "
                           "only references inside the schema are followed") from exc
    finally:
        _deadline.reset(token)


__all__ = ["SchemaError", "UnsafeSchema", "ValidationTooSlow", "compile_schema", "first_error", "short"]
