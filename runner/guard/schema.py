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

import contextlib
import contextvars
import re._constants  # type: ignore[import-not-found]  # the parser behind re.compile; typeshed has no stubs
import re._parser  # type: ignore[import-not-found]
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
MAX_PATTERN_UNITS = 10_000
"""Largest a pattern may grow when the ``regex`` module compiles it. It writes out a repeat's minimum count (and
nested repeats' product): ``((a{1000}){1000}){1000}`` compiles for minutes holding the GIL and takes gigabytes, and
the match timeout does not cover compiling. Honest patterns (``^[0-9a-f]{64}$``, dates, ``.{0,255}``) use tens."""
VALIDATION_BUDGET_S = 0.5
VALIDATION_S_PER_VALUE = 10e-6
"""The budget grows with the instance: the deadline is there for schemas whose evaluation explodes, not for
large honest values. jsonschema takes ~4 µs per value of a plain schema; a flat 0.5 s dropped the memory
server's graph of 10,000 entities (90,000 values, 0.4 s idle) whenever the machine was busy. 10 µs leaves room
for a shared CPU and bounds a result the sanitizer may walk (200,000 values) to about 2.5 s."""
QUICK_BUDGET_S = 0.002
"""What a validation on the event loop (``on_the_loop``) may take before it gives up with NotQuick, to be done again
in a thread. Whether a schema is "plain" (no pattern, no reference, a few hundred values) does not bound its cost:
20 levels of ``anyOf`` with ``unevaluatedProperties`` (80 values) re-evaluate each other exponentially, and a flat
``anyOf`` of 60 branches over 60 items runs 36 ms of jsonschema, all of it holding up every session on the loop."""
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("schema_deadline", default=0.0)
_on_loop: contextvars.ContextVar[bool] = contextvars.ContextVar("schema_on_loop", default=False)
_NO_RETRIEVAL: Registry[Any] = Registry()


class UnsafeSchema(Exception):
    """The schema uses a construct the runner refuses to evaluate; the message says which."""


class ValidationTooSlow(Exception):
    pass


class NotQuick(Exception):
    """A validation on the event loop passed QUICK_BUDGET_S: not an answer, a hand-over (do it in a thread)."""


@contextlib.contextmanager
def on_the_loop() -> Iterator[None]:
    """Validations in the block are cut at QUICK_BUDGET_S with NotQuick instead of running their full budget."""
    token = _on_loop.set(True)
    try:
        yield
    finally:
        _on_loop.reset(token)


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


def _budgeted(check: Any) -> Any:
    """``check`` that first looks at the validation's deadline. Only patterns looked before, so a schema without
    one ran unbounded: 22 levels of ``anyOf`` of two ``$ref`` to the next level try 2**22 branches, minutes of
    pure Python holding the GIL (every session waits) for one structuredContent or one call's arguments."""

    def budgeted(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
        if time.monotonic() >= _deadline.get():
            raise ValidationTooSlow
        yield from check(validator, value, instance, schema)

    return budgeted


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    """uniqueItems in one pass over hashed items: jsonschema compares objects pairwise, one keyword call that no
    deadline interrupts (5000 objects took 17 s of the GIL)."""
    if unique and validator.is_type(instance, "array"):
        seen = {_same(item) for item in instance}
        if len(seen) < len(instance):
            yield ValidationError(f"{short(repr(instance), 80)} has non-unique elements")


def _same(value: Any) -> Any:
    """A hashable form equal for exactly the JSON values jsonschema calls equal: 1 and 1.0 alike, True and 1 not,
    objects whatever their key order. Accepted values nest a bounded depth (validate.MAX_JSON_DEPTH)."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, float) and value.is_integer():
        return ("number", int(value))
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(_same(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((key, _same(item)) for key, item in value.items()))
    return ("string", value)


def _uses(schema: Any, keyword: str) -> bool:
    if isinstance(schema, dict):
        return keyword in schema or any(_uses(v, keyword) for v in schema.values())
    if isinstance(schema, list):
        return any(_uses(v, keyword) for v in schema)
    return False


def _units(node: Any) -> int:
    """How large ``regex`` writes out a parsed pattern (``re._parser``'s tree): repeats multiply by their minimum."""
    if isinstance(node, re._parser.SubPattern):
        total = 0
        for op, arguments in node.data:
            if op in (re._constants.MAX_REPEAT, re._constants.MIN_REPEAT, re._constants.POSSESSIVE_REPEAT):
                low, _, inner = arguments
                total += max(low, 1) * _units(inner)
            else:
                total += 1 + _units(arguments)
            if total > MAX_PATTERN_UNITS:
                break  # no need to multiply further: enough to refuse
        return total
    if isinstance(node, list | tuple):
        return sum(_units(item) for item in node)
    return 0


def _pattern_problem(schema: Any) -> str | None:
    """The first pattern in ``schema`` (a ``pattern`` string, a ``patternProperties`` key) too large to compile."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            patterns = [item["pattern"]] if isinstance(item.get("pattern"), str) else []
            if isinstance(item.get("patternProperties"), dict):
                patterns.extend(item["patternProperties"])
            for pattern in patterns:
                if _units(re._parser.parse(pattern)) > MAX_PATTERN_UNITS:
                    return f"its pattern {short(repr(pattern), 80)} repeats more than {MAX_PATTERN_UNITS} times in all"
            stack.extend(item.values())
    return None


def compile_schema(schema: dict[str, Any]) -> Validator:
    """A validator for ``schema``; SchemaError if it is not valid JSON Schema, UnsafeSchema if refused."""
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        base.check_schema(schema)
    except (OverflowError, RecursionError) as exc:  # re.compile of a 'regex' format: a{99999999999} overflows
        raise UnsafeSchema(f"it holds a pattern Python cannot compile ({short(str(exc), 80)})") from None
    problem = _pattern_problem(schema)
    if problem is not None:
        raise UnsafeSchema(problem)
    if _uses(schema, "unevaluatedProperties") and _uses(schema, "patternProperties"):
        raise UnsafeSchema(
            "it combines unevaluatedProperties with patternProperties, which the runner does not evaluate"
        )
    own = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "uniqueItems": _unique_items,
    }
    keywords = {keyword: _budgeted(own.get(keyword, check)) for keyword, check in base.VALIDATORS.items()}
    safe = jsonschema.validators.extend(base, keywords)  # type: ignore[no-untyped-call]  # the stubs leave extend untyped
    validator: Validator = safe(schema, registry=_NO_RETRIEVAL)
    return validator


def first_error(validator: Validator, instance: Any) -> ValidationError | None:
    """The most relevant error, within the time budget (a base plus an allowance per value of ``instance``).

    Raises UnsafeSchema when a ``$ref`` cannot be resolved locally (nothing is
    fetched) and ValidationTooSlow when the budget runs out; inside ``on_the_loop``
    the budget is QUICK_BUDGET_S, and running out of it raises NotQuick.
    """
    quick = _on_loop.get()
    budget = QUICK_BUDGET_S if quick else VALIDATION_BUDGET_S + _values(instance) * VALIDATION_S_PER_VALUE
    token = _deadline.set(time.monotonic() + budget)
    try:
        error: ValidationError | None = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        return error
    except ValidationTooSlow:
        if quick:
            raise NotQuick from None
        raise
    except Unresolvable as exc:
        raise UnsafeSchema(f"it has a $ref the runner does not resolve ({short(str(exc), 120)}); "
                           "only references inside the schema are followed") from exc
    finally:
        _deadline.reset(token)


def _values(instance: Any) -> int:
    """How many JSON values ``instance`` holds (containers and what they hold), counted without recursion."""
    count, stack = 0, [instance]
    while stack:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


__all__ = [
    "NotQuick",
    "SchemaError",
    "UnsafeSchema",
    "ValidationTooSlow",
    "compile_schema",
    "first_error",
    "on_the_loop",
    "short",
]
