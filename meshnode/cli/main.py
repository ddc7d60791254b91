"""Entry point of the `meshnode` command.

Rules of this module: commands parse arguments, call one function of `meshnode.spec` (or,
later, the node's HTTP API) and print. Nothing here may import libp2p, wasmtime, trio or
docker at module level: the CLI starts in well under 300 ms (tests/cli/test_startup.py).
Errors meshnode raises on purpose (`MeshnodeError`) are printed without a traceback and give
exit code 1; usage errors give click's exit code 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from meshnode import __version__
from meshnode.errors import MeshnodeError, SpecError
from meshnode.spec import Job, encode_job, load_job, template_variables

__all__ = ["cli", "main"]

EXIT_INVALID: Final = 1
STDIN_NAME: Final = "-"

_F = TypeVar("_F", bound=Callable[..., Any])


def template_options(command: _F) -> _F:
    """The template flags shared by every command that reads a spec (as Bacalhau's CLI)."""
    decorators = (
        click.option(
            "--template-vars",
            "template_vars",
            multiple=True,
            metavar="K=V[,K=V]",
            help="Template variables (repeatable, comma-separated).",
        ),
        click.option(
            "--template-envs",
            "template_envs",
            metavar="REGEX",
            help="Use environment variables whose names match REGEX as template variables.",
        ),
        click.option(
            "--no-template",
            is_flag=True,
            help="Read the spec as it is, without rendering {{ }} templates.",
        ),
    )
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _read_spec(
    path: str,
    *,
    template_vars: Sequence[str],
    template_envs: str | None,
    no_template: bool,
) -> Job:
    """Read, render and validate one spec file; errors name the file."""
    try:
        data = sys.stdin.buffer.read() if path == STDIN_NAME else Path(path).read_bytes()
    except OSError as error:
        raise click.FileError(path, hint=error.strerror or str(error)) from None
    variables = (
        None
        if no_template
        else template_variables(template_vars, template_envs, environ=dict(os.environ))
    )
    try:
        return load_job(data, template_variables=variables)
    except SpecError as error:
        raise error.with_source(path) from None
    except MeshnodeError as error:
        raise MeshnodeError(f"{path}: {error}") from None


class _Group(click.Group):
    """Shows `MeshnodeError`s as messages, not tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeshnodeError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_INVALID)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshnode")
def cli() -> None:
    """meshnode: a peer-to-peer compute mesh for edge fleets, on Bacalhau's job model."""


@cli.command()
def version() -> None:
    """Print the client version."""
    click.echo(f"meshnode {__version__}")


@cli.group(cls=_Group)
def job() -> None:
    """Validate, run and inspect jobs."""


@job.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@template_options
def validate(
    files: tuple[str, ...],
    template_vars: tuple[str, ...],
    template_envs: str | None,
    no_template: bool,
) -> None:
    """Check job specs (YAML or JSON; - reads standard input). Reports every problem."""
    invalid = 0
    for path in files:
        try:
            spec = _read_spec(
                path,
                template_vars=template_vars,
                template_envs=template_envs,
                no_template=no_template,
            )
        except MeshnodeError as error:
            invalid += 1
            click.echo(str(error), err=True)
            continue
        click.echo(f"{path}: valid {spec.type} job ({_describe(spec)})")
    if invalid:
        click.echo(f"{invalid} of {len(files)} specs invalid", err=True)
        sys.exit(EXIT_INVALID)


@job.command()
@click.argument("file", metavar="FILE")
@click.option(
    "--dry-run", is_flag=True, help="Render and validate; print the spec, submit nothing."
)
@click.option(
    "--output",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Format of the printed spec.",
)
@template_options
def run(
    file: str,
    dry_run: bool,
    output: str,
    template_vars: tuple[str, ...],
    template_envs: str | None,
    no_template: bool,
) -> None:
    """Run a job from a spec file (YAML or JSON; - reads standard input)."""
    spec = _read_spec(
        file, template_vars=template_vars, template_envs=template_envs, no_template=no_template
    )
    if not dry_run:
        raise click.UsageError(
            "submitting to a node is not available yet (the node is the next milestone); "
            "use --dry-run to check the spec and print it normalized"
        )
    click.echo(encode_job(spec, spec_format="json" if output == "json" else "yaml"), nl=False)


def _describe(spec: Job) -> str:
    task = spec.task
    engine = task.engine.type if task.engine is not None else "no engine"
    runs = f"{spec.count} execution{'s' if spec.count != 1 else ''}"
    if spec.type in ("ops", "daemon"):
        runs = "one execution per matching node"
    return f"{engine}, {runs}"


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="meshnode")
