"""Template variables from the command line: `--template-vars` and `--template-envs`.

Pure functions: the caller passes the environment in, so this stays testable and free of
process state (the core/spec import rule).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from meshnode.errors import MeshnodeError

__all__ = ["TemplateVariablesError", "template_variables"]


class TemplateVariablesError(MeshnodeError):
    """A `--template-vars` or `--template-envs` value is malformed."""


def template_variables(
    assignments: Iterable[str],
    env_pattern: str | None,
    environ: Mapping[str, str],
) -> dict[str, str]:
    """Variables for a template, as Bacalhau's CLI builds them.

    `assignments` are `--template-vars` values, each `k=v` or several joined by commas
    (`a=1,b=2`); a piece without `=` continues the previous value, so `list=a,b` keeps its
    comma. `env_pattern` selects environment variables whose names it matches anywhere (Go's
    `regexp.MatchString`). Explicit assignments win over environment variables.
    """
    variables: dict[str, str] = {}
    if env_pattern is not None:
        try:
            pattern = re.compile(env_pattern)
        except re.error as error:
            raise TemplateVariablesError(
                f"--template-envs {env_pattern!r} is not a regular expression: {error}"
            ) from None
        variables.update({name: value for name, value in environ.items() if pattern.search(name)})
    for assignment in assignments:
        last_name: str | None = None
        for piece in assignment.split(","):
            name, equals, value = piece.partition("=")
            if equals and name.strip():
                last_name = name.strip()
                variables[last_name] = value
            elif last_name is not None:
                variables[last_name] += "," + piece
            else:
                raise TemplateVariablesError(
                    f"--template-vars {assignment!r}: {piece!r} is not key=value"
                )
    return variables
