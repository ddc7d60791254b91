"""Reading a job spec: text → (template) → YAML/JSON document → Job, and writing one back.

Rules of this module:
- YAML is read as Go's decoder reads it (YAML 1.2 flavour): plain scalars stay text and the
  schema decides what they mean, so `Values: [on]` is the string "on", not true, and a
  version `1.10` is not the float 1.1. Only `null`/`~`/empty are null. Duplicate keys are
  errors, not a silent "last one wins".
- JSON is read by msgspec. Which format: the caller says, or the first non-blank character
  does (`{` is JSON).
- Everything a user can send ends as a `Job` or a `SpecError`; a document too large, too deep
  or cyclic (YAML aliases) is a `SpecError` too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec
import yaml

from meshnode.errors import SpecError
from meshnode.spec.convert import SpecTooLargeError, convert_struct
from meshnode.spec.model import Job
from meshnode.spec.normalize import normalize_job
from meshnode.spec.problems import ProblemCollector, show
from meshnode.spec.template import render_template
from meshnode.spec.validate import validate_job

__all__ = [
    "MAX_SPEC_BYTES",
    "SpecFormat",
    "decode_document",
    "encode_job",
    "job_from_document",
    "load_job",
]

SpecFormat = Literal["auto", "yaml", "json"]

# A spec may carry a small inline module as a data: URL; anything bigger travels as data.
MAX_SPEC_BYTES: Final = 8 * 1024 * 1024


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with Go-like scalars and duplicate-key detection."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: SafeConstructor reports it below
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {show(key)} twice (first on line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# Keep only the null and merge-key resolvers: every other plain scalar is a string.
_SpecLoader.yaml_implicit_resolvers = {}
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class _SpecDumper(yaml.SafeDumper):
    """Block style, keys in model order, and strings that look like other types quoted."""


# YAML readers fold the line breaks NEL, LS and PS inside plain and single-quoted scalars;
# only a double-quoted scalar keeps them (escaped), so such strings are written that way.
_FOLDED_BREAKS: Final = frozenset("\x85\u2028\u2029")


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = '"' if _FOLDED_BREAKS.intersection(text) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_SpecDumper.add_representer(str, _represent_text)


def decode_document(data: str | bytes, *, spec_format: SpecFormat = "auto") -> object:
    """Parse YAML or JSON text into plain Python values; `SpecError` when it is not."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError.single(
            "", f"the spec is {len(data)} bytes; the limit is {MAX_SPEC_BYTES} bytes"
        )
    text = _as_text(data)
    if spec_format == "auto":
        spec_format = "json" if text.lstrip().startswith("{") else "yaml"
    if spec_format == "json":
        try:
            return msgspec.json.decode(text.encode())
        except msgspec.DecodeError as error:
            raise SpecError.single("", f"not valid JSON: {error}") from None
        except RecursionError:
            raise SpecError.single("", "not valid JSON: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_SpecLoader)
    except yaml.MarkedYAMLError as error:
        raise SpecError.single("", f"not valid YAML: {_describe_yaml_error(error)}") from None
    except yaml.YAMLError as error:
        raise SpecError.single("", f"not valid YAML: {error}") from None
    except RecursionError:
        raise SpecError.single("", "not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as error:
        # PyYAML's constructors for explicit tags (`!!int abc`, `!!timestamp x`) fail with
        # plain Python errors rather than YAMLError.
        raise SpecError.single(
            "", f"not valid YAML: a tagged value is malformed ({error})"
        ) from None


def job_from_document(document: object) -> Job:
    """Convert, normalize and validate a decoded document; every problem in one `SpecError`."""
    if document is None:
        raise SpecError.single("", "the spec is empty")
    if isinstance(document, dict) and len(document) == 1:
        ((key, inner),) = document.items()
        if isinstance(key, str) and key.lower() == "job" and isinstance(inner, dict):
            document = inner  # the API's {"Job": {...}} envelope
    if not isinstance(document, dict):
        raise SpecError.single(
            "", f"a job spec is a mapping of fields (Name, Type, Tasks, …), got {show(document)}"
        )
    problems = ProblemCollector()
    try:
        job = convert_struct(document, Job, "", problems)
    except SpecTooLargeError:
        raise SpecError.single("", "the spec is too large or nested too deeply") from None
    if job is not None:
        job = normalize_job(job)
        validate_job(job, problems)
    problems.raise_if_any()
    assert job is not None
    return job


def load_job(
    data: str | bytes,
    *,
    template_variables: Mapping[str, str] | None = None,
    spec_format: SpecFormat = "auto",
) -> Job:
    """The whole read path. `template_variables=None` turns template rendering off."""
    if template_variables is not None:
        data = render_template(_as_text(data), template_variables)
    return job_from_document(decode_document(data, spec_format=spec_format))


def encode_job(job: Job, *, spec_format: Literal["yaml", "json"] = "yaml") -> str:
    """The spec in Bacalhau's spelling; re-reading it gives an equal `Job`."""
    if spec_format == "json":
        return msgspec.json.format(msgspec.json.encode(job).decode(), indent=2) + "\n"
    return yaml.dump(
        msgspec.to_builtins(job),
        Dumper=_SpecDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


def _as_text(data: str | bytes) -> str:
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as error:
            raise SpecError.single(
                "", f"the spec has a character that is not Unicode text at offset {error.start}"
            ) from None
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SpecError.single(
            "", f"the spec is not UTF-8 text (bad byte at offset {error.start})"
        ) from None


def _describe_yaml_error(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = error.problem or error.context or "syntax error"
    return where + what
