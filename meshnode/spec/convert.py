"""Turning decoded YAML/JSON (dicts, lists, scalars) into spec Structs, shape and types only.

Rules of this module:
- The Structs in `model.py` are the schema: this walker reads them through
  `msgspec.inspect`, so a field added to the model is parsed without touching this file.
- Keys match case-insensitively (Bacalhau clients send both `Name` and `name`); a key given
  twice in two spellings is an error; an unknown key is an error with a "did you mean".
- Scalars are accepted as Go's YAML decoder would: plain YAML scalars arrive as strings (see
  `load.py`), so integer and boolean fields parse strings, and string fields accept numbers.
  A null value means "absent".
- Every problem is collected with its field path; the walk goes on after a problem, leaving
  the field at its default, so one pass reports everything.
- The walk has a budget (values visited, depth): YAML aliases can make a small document a huge
  or cyclic graph, and no input may hang or crash the parser.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import msgspec
from msgspec import inspect as mi

from meshnode.spec.problems import (
    ProblemCollector,
    at_field,
    at_index,
    at_key,
    did_you_mean,
    show,
)

__all__ = ["SpecTooLargeError", "convert_struct"]

MAX_VALUES: Final = 200_000
MAX_DEPTH: Final = 64

# int64 has 19 digits; more is never a valid count or timeout (and int() of thousands of digits
# raises ValueError by design).
_INTEGER_RE: Final = re.compile(r"[+-]?[0-9]{1,25}")
_BOOLEANS: Final = {"true": True, "false": False}


class SpecTooLargeError(Exception):
    """The document is beyond the walker's budget; reported as one problem by the caller."""


class _Absent:
    """Marks a value that failed to convert (the field keeps its default)."""


_ABSENT: Final = _Absent()


@functools.cache
def _struct_info(cls: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType), info
    return info


_S = TypeVar("_S", bound=msgspec.Struct)


def convert_struct(
    value: object, cls: type[_S], path: str, problems: ProblemCollector
) -> _S | None:
    """Convert `value` to `cls`; None (with problems recorded) when it is not a mapping."""
    walker = _Walker(problems)
    result = walker.struct(value, _struct_info(cls), path, depth=0)
    return result if isinstance(result, cls) else None


class _Walker:
    def __init__(self, problems: ProblemCollector) -> None:
        self._problems = problems
        self._visited = 0

    def value(self, value: object, info: mi.Type, path: str, depth: int) -> Any:
        self._visited += 1
        if self._visited > MAX_VALUES or depth > MAX_DEPTH:
            raise SpecTooLargeError
        match info:
            case mi.UnionType():
                return self.union(value, info, path, depth)
            case mi.StructType():
                return self.struct(value, info, path, depth)
            case mi.StrType():
                return self.string(value, path)
            case mi.IntType():
                return self.integer(value, info, path)
            case mi.BoolType():
                return self.boolean(value, path)
            case mi.VarTupleType() | mi.ListType():
                return self.sequence(value, info.item_type, path, depth)
            case mi.DictType():
                return self.mapping(value, info.value_type, path, depth)
        raise TypeError(f"the spec model uses a type the converter does not know: {info!r}")

    def _fail(self, path: str, message: str) -> _Absent:
        self._problems.add(path, message)
        return _ABSENT

    # --- containers ---------------------------------------------------------------------

    def struct(self, value: object, info: mi.StructType, path: str, depth: int) -> Any:
        if not isinstance(value, dict):
            return self._fail(path, f"expected a mapping of fields, got {show(value)}")
        fields = {field.encode_name.lower(): field for field in info.fields}
        params_by_type: Mapping[str, type[msgspec.Struct]] | None = getattr(
            info.cls, "params_by_type", None
        )
        given: dict[str, tuple[str, object]] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self._fail(path, f"field name {show(key)} is not a string")
                continue
            field = fields.get(key.lower())
            if field is None:
                self._unknown_field(at_field(path, key), key, info)
                continue
            if field.name in given:
                first_spelling = given[field.name][0]
                self._fail(at_field(path, key), f"given twice (also as {first_spelling})")
                continue
            given[field.name] = (key, item)

        kwargs: dict[str, Any] = {}
        for field in info.fields:
            if field.name not in given:
                continue
            key, item = given[field.name]
            if item is None:  # null means absent, as Go's decoder reads it
                continue
            field_path = at_field(path, field.encode_name)
            if params_by_type is not None and field.name == "params":
                continue  # converted below, once the type is known
            converted = self.value(item, field.type, field_path, depth + 1)
            if converted is not _ABSENT:
                kwargs[field.name] = converted
        if params_by_type is not None:
            self._typed_params(kwargs, given.get("params"), params_by_type, info, path, depth)
        return info.cls(**kwargs)

    def _typed_params(
        self,
        kwargs: dict[str, Any],
        given_params: tuple[str, object] | None,
        params_by_type: Mapping[str, type[msgspec.Struct]],
        info: mi.StructType,
        path: str,
        depth: int,
    ) -> None:
        kind: str = getattr(info.cls, "type_kind", "type")
        type_path = at_field(path, "Type")
        type_name = kwargs.get("type", "")
        if not type_name:
            if not self._problems.failed(type_path):
                self._fail(type_path, f"required: the {kind} type ({', '.join(params_by_type)})")
            return
        canonical = {name.lower(): name for name in params_by_type}.get(type_name.lower())
        if canonical is None:
            self._fail(
                type_path,
                f"{show(type_name)} is not a known {kind} type (known: "
                f"{', '.join(params_by_type)}){did_you_mean(type_name, list(params_by_type))}",
            )
            return
        kwargs["type"] = canonical
        params_cls = params_by_type[canonical]
        raw = {} if given_params is None or given_params[1] is None else given_params[1]
        params = self.value(raw, _struct_info(params_cls), at_field(path, "Params"), depth + 1)
        if params is not _ABSENT:
            kwargs["params"] = params

    def _unknown_field(self, path: str, key: str, info: mi.StructType) -> None:
        known = [field.encode_name for field in info.fields]
        hint = did_you_mean(key, known)
        if not hint:
            hint = f" (known fields: {', '.join(known)})" if known else " (takes no fields)"
        self._fail(path, f"unknown field{hint}")

    def sequence(self, value: object, item: mi.Type, path: str, depth: int) -> Any:
        if not isinstance(value, list | tuple):
            return self._fail(path, f"expected a list, got {show(value)}")
        converted = []
        for index, element in enumerate(value):
            element_path = at_index(path, index)
            if element is None and not isinstance(item, mi.StrType):
                self._fail(element_path, "expected a value, got null")
                continue
            # Go reads an empty list item into a string as "".
            given = "" if element is None else element
            result = self.value(given, item, element_path, depth + 1)
            if result is not _ABSENT:
                converted.append(result)
        return tuple(converted)

    def mapping(self, value: object, item: mi.Type, path: str, depth: int) -> Any:
        if not isinstance(value, dict):
            return self._fail(path, f"expected a mapping, got {show(value)}")
        converted: dict[str, Any] = {}
        for key, element in value.items():
            key_text = self.string(key, path)
            if isinstance(key_text, _Absent):
                continue
            if not key_text:
                self._fail(path, "keys must not be empty")
                continue
            element_path = at_key(path, key_text)
            result = self.value("" if element is None else element, item, element_path, depth)
            if result is not _ABSENT:
                converted[key_text] = result
        return converted

    def union(self, value: object, info: mi.UnionType, path: str, depth: int) -> Any:
        # The model's unions are "X or None" and "a struct or a string": choose by shape.
        choices = [choice for choice in info.types if not isinstance(choice, mi.NoneType)]
        if isinstance(value, dict):
            for choice in choices:
                if isinstance(choice, mi.StructType):
                    return self.struct(value, choice, path, depth)
        elif not isinstance(value, list | tuple):
            for choice in choices:
                if not isinstance(choice, mi.StructType):
                    return self.value(value, choice, path, depth)
        return self.value(value, choices[0], path, depth)

    # --- scalars ------------------------------------------------------------------------

    def string(self, value: object, path: str) -> str | _Absent:
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | str):
            text = value if isinstance(value, str) else repr(value)
        else:
            return self._fail(path, f"expected a string, got {show(value)}")
        if "\x00" in text:
            return self._fail(path, f"{show(text)} contains a NUL byte")
        return text

    def integer(self, value: object, info: mi.IntType, path: str) -> int | _Absent:
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and _INTEGER_RE.fullmatch(value.strip()):
            number = int(value.strip())
        if number is None:
            return self._fail(path, f"{show(value)} is not a whole number")
        if info.ge is not None and number < info.ge:
            return self._fail(path, f"{show(value)} must be ≥ {info.ge}")
        if info.le is not None and number > info.le:
            return self._fail(path, f"{show(value)} must be ≤ {info.le}")
        return number

    def boolean(self, value: object, path: str) -> bool | _Absent:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        return self._fail(path, f"{show(value)} is not true or false")
