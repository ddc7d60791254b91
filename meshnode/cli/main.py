"""Entry point of the `meshnode` command.

Rules of this module:
- Commands parse arguments, call one function (of `meshnode.spec`, of the node's HTTP API
  through `cli.client`, or `runtime.node.run_node` for `start`) and print through the
  `Console` built here, in the entry point, and passed down.
- The CLI is a thin client that starts fast: nothing here imports libp2p, wasmtime, trio,
  docker or rich at module level (tests/test_import_rules.py), and the spec reader, the HTTP
  client's stdlib modules, tarfile and the runtime are imported inside the commands that use
  them. `meshnode --help` pays only for click.
- Errors meshnode raises on purpose (`MeshnodeError`, including the API's errors) are printed
  as `Error: …` lines without a traceback and give exit code 1; usage errors (a malformed flag
  value, named) give click's exit code 2. Ctrl-C gives 130 and a word, never a traceback.
- Every command that talks to a node takes `--api-host/--api-port` (environment
  `MESHNODE_API_HOST`/`MESHNODE_API_PORT`, default 127.0.0.1:1234) and `--output json|yaml`
  for the API's raw objects instead of the human view.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from meshnode import __version__
from meshnode.cli.client import (
    DEFAULT_API_HOST,
    DEFAULT_API_PORT,
    ApiClient,
    ApiUnreachableError,
    path_of,
)
from meshnode.cli.flags import (
    FlagError,
    node_config_from_flags,
    parse_env,
    parse_input,
    parse_key_values,
    parse_quantity,
    parse_result_path,
)
from meshnode.cli.output import Console, print_data
from meshnode.errors import MeshnodeError, SpecError

if TYPE_CHECKING:
    from meshnode.cli.build import TaskFlags
    from meshnode.cli.jobs import RunOptions
    from meshnode.spec import Job

__all__ = ["cli", "main"]

EXIT_INVALID: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
STDIN_NAME: Final = "-"
API_HOST_ENV: Final = "MESHNODE_API_HOST"
API_PORT_ENV: Final = "MESHNODE_API_PORT"
NODES_PATH: Final = "/api/v1/orchestrator/nodes"
AGENT_PATH: Final = "/api/v1/agent"

_F = TypeVar("_F", bound=Callable[..., Any])


def _apply(command: _F, decorators: Sequence[Callable[[Any], Any]]) -> _F:
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def template_options(command: _F) -> _F:
    """The template flags shared by every command that reads a spec (as Bacalhau's CLI)."""
    return _apply(
        command,
        (
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
        ),
    )


def api_options(command: _F) -> _F:
    """Where the node's API is: flags, else the environment, else 127.0.0.1:1234."""
    return _apply(
        command,
        (
            click.option(
                "--api-host",
                envvar=API_HOST_ENV,
                default=DEFAULT_API_HOST,
                show_default=True,
                show_envvar=True,
                help="Host of the node's API.",
            ),
            click.option(
                "--api-port",
                envvar=API_PORT_ENV,
                type=click.IntRange(1, 65535),
                default=DEFAULT_API_PORT,
                show_default=True,
                show_envvar=True,
                help="Port of the node's API.",
            ),
        ),
    )


def output_option(command: _F) -> _F:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["json", "yaml"]),
        default=None,
        help="Print the API's raw object as JSON or YAML instead of the human view.",
    )(command)


def run_options(command: _F) -> _F:
    """What happens after submitting (job run, docker run, wasm run)."""
    return _apply(
        command,
        (
            click.option(
                "--wait/--no-wait",
                default=None,
                help="Wait until the job ends (daemon/service: until it runs), showing "
                "progress. Default: wait, unless --id-only.",
            ),
            click.option(
                "-f",
                "--follow",
                is_flag=True,
                help="Stream the job's logs until it ends (status lines go to stderr).",
            ),
            click.option(
                "--id-only", is_flag=True, help="Print only the job id (waits only with --wait)."
            ),
            click.option(
                "--wait-timeout",
                "wait_timeout_s",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                metavar="SECONDS",
                help="Stop waiting after this long (the job keeps going). Default: no limit.",
            ),
        ),
    )


@contextmanager
def _usage_errors() -> Iterator[None]:
    """A malformed flag value found after parsing is still a usage error naming the flag."""
    try:
        yield
    except FlagError as error:
        raise click.BadParameter(
            error.message, ctx=click.get_current_context(), param_hint=f"'{error.flag}'"
        ) from None


def _console(ctx: click.Context) -> Console:
    console = ctx.find_object(Console)
    if console is None:  # a command invoked on its own (tests through click's runner)
        console = Console(sys.stdout, sys.stderr)
        ctx.obj = console
    return console


def _read_spec(
    path: str,
    *,
    template_vars: Sequence[str],
    template_envs: str | None,
    no_template: bool,
) -> Job:
    """Read, render and validate one spec file; errors name the file."""
    from meshnode.spec import load_job, template_variables  # heavy: 60 ms

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
    """Shows `MeshnodeError`s as messages, not tracebacks; Ctrl-C as a word, not a trace."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeshnodeError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_INVALID)
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshnode")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """meshnode: a peer-to-peer compute mesh for edge fleets, on Bacalhau's job model."""
    ctx.obj = Console(sys.stdout, sys.stderr)


@cli.command()
def version() -> None:
    """Print the client version."""
    click.echo(f"meshnode {__version__}")


# --- start -------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the node keeps its identity, state and execution files [default: ~/.meshnode].",
)
@click.option(
    "--api-host",
    default=DEFAULT_API_HOST,
    show_default=True,
    envvar=API_HOST_ENV,
    help="Address the API listens on.",
)
@click.option(
    "--api-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_API_PORT,
    show_default=True,
    envvar=API_PORT_ENV,
    help="Port the API listens on (0: any free port; the ready line says which).",
)
@click.option(
    "--labels",
    multiple=True,
    metavar="K=V[,K=V]",
    help="Labels of this node, for job constraints (repeatable).",
)
@click.option("--limit-cpu", metavar="CPU", help="CPU jobs may use, e.g. 2 or 500m.")
@click.option("--limit-memory", metavar="SIZE", help="Memory jobs may use, e.g. 4Gb.")
@click.option("--limit-disk", metavar="SIZE", help="Disk jobs may use, e.g. 20Gb.")
@click.option("--limit-gpu", metavar="N", help="GPUs jobs may use.")
@click.option(
    "--allow-listed-local-paths",
    multiple=True,
    metavar="PATH[:rw][,PATH…]",
    help="Host folders jobs may mount as localDirectory inputs, read-only unless "
    ":rw (repeatable, comma-separated).",
)
@click.option(
    "--default-queue-timeout",
    "default_queue_timeout_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="How long a job may wait for capacity when its spec sets no QueueTimeout.",
)
@click.option("--no-docker", is_flag=True, help="Run without the Docker engine (wasm only).")
@click.option(
    "--swarm-host",
    default=None,
    metavar="ADDRESS",
    help="Address the mesh (libp2p) listens on [default: 0.0.0.0].",
)
@click.option(
    "--swarm-port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="TCP port of the mesh [default: 1235, Bacalhau's; 0: any free port].",
)
@click.option(
    "--peers",
    multiple=True,
    metavar="MULTIADDR[,MULTIADDR]",
    help="Nodes to join the mesh through (repeatable, comma-separated), e.g. "
    "/ip4/192.168.1.10/tcp/1235/p2p/12D3KooW… as `meshnode agent node` prints it.",
)
@click.option(
    "--swarm-key",
    "swarm_key_file",
    metavar="FILE",
    default=None,
    help="A private mesh: only nodes with the same key (IPFS's swarm.key format) connect. "
    "Make one with: meshnode swarm-key generate > swarm.key",
)
@click.option("--no-mdns", is_flag=True, help="Do not look for nodes on the local network (mDNS).")
@click.option(
    "--require-approval",
    is_flag=True,
    help="Give work only to nodes an operator approved (meshnode node approve ID).",
)
@click.option(
    "--bid-probe-exec",
    metavar="CMD",
    default=None,
    help="Run CMD with a job as JSON on stdin before taking it; exit code 0 means bid.",
)
@click.option(
    "--deny-networked-jobs",
    is_flag=True,
    help="Refuse jobs that ask for network access (http or full).",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 7),
    default=None,
    metavar="N",
    help="How many nodes hold each job this node schedules (1-7) [default: 3].",
)
def start(
    data_dir: str | None,
    api_host: str,
    api_port: int,
    labels: tuple[str, ...],
    limit_cpu: str | None,
    limit_memory: str | None,
    limit_disk: str | None,
    limit_gpu: str | None,
    allow_listed_local_paths: tuple[str, ...],
    default_queue_timeout_s: float | None,
    no_docker: bool,
    swarm_host: str | None,
    swarm_port: int | None,
    peers: tuple[str, ...],
    swarm_key_file: str | None,
    no_mdns: bool,
    require_approval: bool,
    bid_probe_exec: str | None,
    deny_networked_jobs: bool,
    replicas: int | None,
) -> None:
    """Start a node in this process; it runs until Ctrl-C (SIGINT) or SIGTERM.

    It joins the nodes it finds on the local network (mDNS) and those --peers names; the
    first lines it prints are where its API listens and its mesh addresses."""
    with _usage_errors():
        config = node_config_from_flags(
            data_dir=data_dir,
            api_host=api_host,
            api_port=api_port,
            labels=labels,
            limit_cpu=limit_cpu,
            limit_memory=limit_memory,
            limit_disk=limit_disk,
            limit_gpu=limit_gpu,
            allow_listed_local_paths=allow_listed_local_paths,
            default_queue_timeout_s=default_queue_timeout_s,
            no_docker=no_docker,
            cwd=Path.cwd(),
            swarm_host=swarm_host,
            swarm_port=swarm_port,
            peers=peers,
            swarm_key_file=swarm_key_file,
            no_mdns=no_mdns,
            require_approval=require_approval,
            bid_probe_exec=bid_probe_exec,
            deny_networked_jobs=deny_networked_jobs,
            replicas=replicas,
        )
    # Imported here: the runtime loads trio, wasmtime and docker, which no other command needs.
    from meshnode.runtime.node import run_node

    run_node(config)


@cli.group(name="swarm-key", cls=_Group)
def swarm_key() -> None:
    """Keys of private meshes."""


@swarm_key.command(name="generate")
def swarm_key_generate() -> None:
    """Print a new swarm key, for a private mesh that only nodes with the key can join.

    It is IPFS's swarm.key format. Keep it secret, and give it to every node:

    \b
      meshnode swarm-key generate > swarm.key && chmod 600 swarm.key
      meshnode start --swarm-key swarm.key ...
    """
    from meshnode.runtime.transport import generate_swarm_key  # libp2p: only here

    click.echo(generate_swarm_key(), nl=False)


# --- devstack ----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--nodes",
    "node_count",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="How many nodes to start.",
)
@click.option(
    "--data-dir-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Where each node's data dir and log go (node1/, node1.log, …) [default: a new "
    "temporary folder, kept after exit].",
)
@click.option(
    "--base-api-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_API_PORT,
    show_default=True,
    help="API port of node 1; node N gets it + 10·(N-1) (1234, 1244, …). 0: free ports.",
)
@click.option("--no-docker", is_flag=True, help="Start the nodes without Docker (wasm only).")
@click.option("--require-approval", is_flag=True, help="Start the nodes with --require-approval.")
@click.option(
    "--swarm-key",
    "swarm_key_file",
    metavar="FILE",
    default=None,
    help="Make it a private mesh with this swarm.key.",
)
@click.option(
    "--labels",
    multiple=True,
    metavar="K=V[,K=V]",
    help="Labels of every node (each also gets devstack-node=N).",
)
@click.pass_context
def devstack(
    ctx: click.Context,
    node_count: int,
    data_dir_root: str | None,
    base_api_port: int,
    no_docker: bool,
    require_approval: bool,
    swarm_key_file: str | None,
    labels: tuple[str, ...],
) -> None:
    """Run a mesh of nodes on this machine, on loopback, until Ctrl-C.

    Each node is a `meshnode start` process with its own data dir, log and API port. Node 1
    starts first; the others join it with --peers. Once every node sees the whole mesh, a
    table says where each one is."""
    from meshnode.cli.devstack import DevstackOptions, run_devstack

    with _usage_errors():
        if base_api_port and base_api_port + 10 * (node_count - 1) > 65535:
            raise FlagError(
                "--base-api-port", f"{base_api_port} leaves no room for {node_count} nodes"
            )
        cwd = Path.cwd()
        parse_key_values(labels, "--labels")  # a typo is a usage error here, not in node 2
        if swarm_key_file is not None:
            swarm_key_file = str(Path(cwd, Path(swarm_key_file).expanduser()))
            if not Path(swarm_key_file).is_file():
                raise FlagError("--swarm-key", f"{swarm_key_file!r} is not a file")
    options = DevstackOptions(
        node_count=node_count,
        data_dir_root=Path(cwd, data_dir_root) if data_dir_root else None,
        base_api_port=base_api_port,
        no_docker=no_docker,
        require_approval=require_approval,
        swarm_key_file=swarm_key_file,
        labels=labels,
    )
    ctx.exit(run_devstack(options, _console(ctx)))


# --- job ---------------------------------------------------------------------------------------


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
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default=None,
    help="With --dry-run: format of the printed spec [default: yaml]. Otherwise: print the "
    "API's job object (after waiting) instead of the human view.",
)
@run_options
@api_options
@template_options
@click.pass_context
def run(
    ctx: click.Context,
    file: str,
    dry_run: bool,
    output: str | None,
    wait: bool | None,
    follow: bool,
    id_only: bool,
    wait_timeout_s: float | None,
    api_host: str,
    api_port: int,
    template_vars: tuple[str, ...],
    template_envs: str | None,
    no_template: bool,
) -> None:
    """Run a job from a spec file (YAML or JSON; - reads standard input).

    Waits until the job ends (a daemon or service job: until it runs), showing its progress,
    then prints its final state; exits with 1 if it failed."""
    spec = _read_spec(
        file, template_vars=template_vars, template_envs=template_envs, no_template=no_template
    )
    if dry_run:
        _print_spec(spec, output or "yaml")
        return
    options = _run_options(wait, follow, id_only, output, wait_timeout_s)
    try:
        code = _submit(ctx, spec, options, ApiClient(api_host, api_port))
    except ApiUnreachableError as error:
        # Before nodes existed `job run` without --dry-run was a usage error (exit 2), and
        # scripts rely on that contract: no node to submit to is still exit 2, with the hint.
        click.echo(f"Error: {error}", err=True)
        click.echo("Hint: to only check the spec, without a node, add --dry-run", err=True)
        ctx.exit(EXIT_USAGE)
    ctx.exit(code)


@job.command()
@click.argument("job_id", metavar="ID")
@api_options
@output_option
@click.pass_context
def describe(
    ctx: click.Context, job_id: str, api_host: str, api_port: int, output: str | None
) -> None:
    """Show a job, its executions and what they printed (ID may be a unique prefix)."""
    from meshnode.cli.jobs import get_job
    from meshnode.cli.views import describe_job

    console = _console(ctx)
    response = get_job(ApiClient(api_host, api_port), job_id)
    if output is not None:
        print_data(console, response, output)
    else:
        describe_job(console, response, now_s=time.time())


@job.command(name="list")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many jobs to show (with --all: page size).",
)
@click.option(
    "--labels",
    "selector",
    metavar="SELECTOR",
    help="Only jobs whose labels match, e.g. 'env=prod,tier!=edge,region in (eu,us)'.",
)
@click.option(
    "--reverse", is_flag=True, help="Newest first (default: oldest first, as the API orders them)."
)
@click.option("--all", "all_pages", is_flag=True, help="Every job, following NextToken.")
@api_options
@output_option
@click.pass_context
def list_jobs(
    ctx: click.Context,
    limit: int,
    selector: str | None,
    reverse: bool,
    all_pages: bool,
    api_host: str,
    api_port: int,
    output: str | None,
) -> None:
    """List jobs as a table."""
    from meshnode.cli.jobs import JOBS_PATH
    from meshnode.cli.views import field, items_of, jobs_table

    console = _console(ctx)
    client = ApiClient(api_host, api_port)
    # The node filters by `labels` (Bacalhau's label selector) and may answer a short page
    # with a NextToken when its scan budget runs out: pages are followed until `limit` jobs
    # are found, or to the end with --all.
    params: dict[str, object] = {"limit": limit, "reverse": reverse, "labels": selector or None}
    jobs: list[Any] = []
    token: str | None = None
    while True:
        response = client.get(JOBS_PATH, {**params, "next_token": token})
        jobs.extend(items_of(response))
        token = field(response, "NextToken") or None
        if not token or (not all_pages and len(jobs) >= limit):
            break
    if not all_pages:
        jobs = jobs[:limit]
    if output is not None:
        print_data(console, {"Items": jobs, "NextToken": "" if all_pages else token or ""}, output)
        return
    jobs_table(console, jobs, now_s=time.time())
    if token and not all_pages:
        console.error("More jobs: --all lists every one, --limit N shows more.")


@job.command()
@click.argument("job_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
@click.option("--execution-id", help="Only this execution's logs.")
@api_options
@output_option
@click.pass_context
def logs(
    ctx: click.Context,
    job_id: str,
    follow: bool,
    execution_id: str | None,
    api_host: str,
    api_port: int,
    output: str | None,
) -> None:
    """Print a job's logs: its stdout on stdout, its stderr on stderr."""
    from meshnode.cli.jobs import print_logs

    if output == "yaml":
        raise click.BadParameter("logs are a stream: use --output json", param_hint="'--output'")
    print_logs(
        ApiClient(api_host, api_port),
        _console(ctx),
        job_id,
        execution_id=execution_id,
        follow=follow,
        raw=output == "json",
    )


@job.command()
@click.argument("job_id", metavar="ID")
@click.option("--reason", default="", help="Why (recorded in the job's history).")
@api_options
@output_option
@click.pass_context
def stop(
    ctx: click.Context, job_id: str, reason: str, api_host: str, api_port: int, output: str | None
) -> None:
    """Stop a job: its executions are cancelled."""
    from meshnode.cli.jobs import JOBS_PATH
    from meshnode.cli.views import field

    console = _console(ctx)
    response = ApiClient(api_host, api_port).delete(
        path_of(JOBS_PATH, job_id), {"reason": reason or None}
    )
    if output is not None:
        print_data(console, response, output)
        return
    message = field(response, "Message", default="") or f"job {job_id} stopped"
    console.print(str(message)[:1].upper() + str(message)[1:])


@job.command()
@click.argument("job_id", metavar="ID")
@api_options
@output_option
@click.pass_context
def executions(
    ctx: click.Context, job_id: str, api_host: str, api_port: int, output: str | None
) -> None:
    """List a job's executions."""
    from meshnode.cli.jobs import JOBS_PATH, fetch_all_pages
    from meshnode.cli.views import executions_table

    console = _console(ctx)
    items = fetch_all_pages(
        ApiClient(api_host, api_port), path_of(JOBS_PATH, job_id) + "/executions", {}
    )
    if output is not None:
        print_data(console, {"Items": items, "NextToken": ""}, output)
    else:
        executions_table(console, items, now_s=time.time())


@job.command()
@click.argument("job_id", metavar="ID")
@click.option("--execution-id", help="Only this execution's events.")
@api_options
@output_option
@click.pass_context
def history(
    ctx: click.Context,
    job_id: str,
    execution_id: str | None,
    api_host: str,
    api_port: int,
    output: str | None,
) -> None:
    """List a job's state changes and those of its executions."""
    from meshnode.cli.jobs import JOBS_PATH, fetch_all_pages
    from meshnode.cli.views import history_table

    console = _console(ctx)
    items = fetch_all_pages(
        ApiClient(api_host, api_port),
        path_of(JOBS_PATH, job_id) + "/history",
        {"execution_id": execution_id},
    )
    if output is not None:
        print_data(console, {"Items": items, "NextToken": ""}, output)
    else:
        history_table(console, items, now_s=time.time())


@job.command()
@click.argument("job_id", metavar="ID")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to put the results [default: ./job-<short id>]; one folder per "
    "execution inside it.",
)
@api_options
@click.pass_context
def get(
    ctx: click.Context, job_id: str, output_dir: Path | None, api_host: str, api_port: int
) -> None:
    """Download the results of every completed execution of a job."""
    from meshnode.cli.jobs import download_results

    console = _console(ctx)
    folder = download_results(
        ApiClient(api_host, api_port), console, job_id, output_dir, cwd=Path.cwd()
    )
    console.error(f"Results in {folder}")


# --- docker run / wasm run ---------------------------------------------------------------------


def task_options(command: _F) -> _F:
    """The flags `docker run` and `wasm run` share (Bacalhau's, where it has them)."""
    return _apply(
        command,
        (
            click.option(
                "-i",
                "--input",
                "inputs",
                multiple=True,
                metavar="SRC:TARGET[:rw] | URL:TARGET",
                help="Data for the task (repeatable): a local path mounted at TARGET "
                "(read-only unless :rw; the node must allow it with "
                "--allow-listed-local-paths), or an http(s) URL downloaded to "
                "TARGET. Example: -i ./data:/inputs -i https://x.org/a.csv:/in/a.csv",
            ),
            click.option(
                "-e",
                "--env",
                multiple=True,
                metavar="NAME=VALUE",
                help="Environment variable of the task (repeatable).",
            ),
            click.option("--cpu", metavar="CPU", help="CPU the task needs, e.g. 500m or 2."),
            click.option("--memory", metavar="SIZE", help="Memory the task needs, e.g. 512Mb."),
            click.option("--disk", metavar="SIZE", help="Disk the task needs, e.g. 1Gb."),
            click.option("--gpu", metavar="N", help="GPUs the task needs."),
            click.option(
                "--network",
                type=click.Choice(["none", "http", "full"], case_sensitive=False),
                default=None,
                help="Network access [default: none; http with --domain].",
            ),
            click.option(
                "--domain",
                "domains",
                multiple=True,
                metavar="DOMAIN",
                help="A domain the task may reach with --network http (repeatable).",
            ),
            click.option(
                "--count",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="How many executions to run.",
            ),
            click.option(
                "--publisher",
                type=click.Choice(["local", "noop"]),
                default="local",
                show_default=True,
                help="Where results go (local: `meshnode job get` downloads them).",
            ),
            click.option(
                "--result-path",
                "result_paths",
                multiple=True,
                metavar="NAME:PATH",
                help="A folder of the task to keep as results (repeatable) "
                "[default: outputs:/outputs].",
            ),
            click.option(
                "--timeout",
                "timeout_s",
                type=click.IntRange(min=0),
                default=None,
                metavar="SECONDS",
                help="Longest run of the task (ExecutionTimeout).",
            ),
            click.option("--name", default="", help="Name of the job."),
            click.option(
                "-l",
                "--labels",
                multiple=True,
                metavar="K=V[,K=V]",
                help="Labels of the job (repeatable).",
            ),
            click.option(
                "--dry-run",
                is_flag=True,
                help="Print the spec that would be submitted, submit nothing.",
            ),
        ),
    )


def _task_flags(
    *,
    inputs: Sequence[str],
    env: Sequence[str],
    cpu: str | None,
    memory: str | None,
    disk: str | None,
    gpu: str | None,
    network: str | None,
    domains: Sequence[str],
    count: int,
    publisher: str,
    result_paths: Sequence[str],
    timeout_s: int | None,
    name: str,
    labels: Sequence[str],
) -> TaskFlags:
    from meshnode.cli.build import DEFAULT_RESULT_PATHS, TaskFlags
    from meshnode.spec import (
        parse_cpu_millicores,
        parse_gpu_count,
        parse_size_bytes,
    )

    cwd = Path.cwd()
    with _usage_errors():
        for text, parse, flag in (
            (cpu, parse_cpu_millicores, "--cpu"),
            (memory, parse_size_bytes, "--memory"),
            (disk, parse_size_bytes, "--disk"),
            (gpu, parse_gpu_count, "--gpu"),
        ):
            parse_quantity(text, parse, flag)
        return TaskFlags(
            count=count,
            name=name,
            labels=parse_key_values(labels, "--labels"),
            inputs=tuple(parse_input(text, cwd=cwd) for text in inputs),
            env=parse_env(env),
            cpu=cpu or "",
            memory=memory or "",
            disk=disk or "",
            gpu=gpu or "",
            network=network,
            domains=tuple(domains),
            publisher=publisher,
            result_paths=(
                tuple(parse_result_path(text) for text in result_paths)
                if result_paths
                else DEFAULT_RESULT_PATHS
            ),
            timeout_s=timeout_s,
        )


@cli.group(cls=_Group)
def docker() -> None:
    """Run a container as a batch job."""


@docker.command(name="run", context_settings={"allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1, metavar="[--] [COMMAND [ARG...]]")
@click.option(
    "--entrypoint",
    metavar="'CMD [ARG...]'",
    help="Replace the image's entrypoint (split like a shell does).",
)
@click.option("-w", "--workdir", default="", help="Working directory inside the container.")
@task_options
@run_options
@output_option
@api_options
@click.pass_context
def docker_run(
    ctx: click.Context,
    /,
    image: str,
    command: tuple[str, ...],
    entrypoint: str | None,
    workdir: str,
    dry_run: bool,
    wait: bool | None,
    follow: bool,
    id_only: bool,
    wait_timeout_s: float | None,
    output: str | None,
    api_host: str,
    api_port: int,
    **task: Any,
) -> None:
    """Run IMAGE with COMMAND as a batch job. Flags come before IMAGE; everything after it
    is the command (`--` is optional).

    Example: meshnode docker run --cpu 500m -i ./data:/inputs busybox -- wc -l /inputs/a.txt
    """
    import shlex

    from meshnode.cli.build import build_docker_job

    flags = _task_flags(**task)
    try:
        entry = shlex.split(entrypoint) if entrypoint else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--entrypoint'") from None
    spec = build_docker_job(
        image, _after_dashes(command), flags, entrypoint=entry, working_directory=workdir
    )
    _run_built(
        ctx, spec, dry_run, wait, follow, id_only, wait_timeout_s, output, api_host, api_port
    )


@cli.group(cls=_Group)
def wasm() -> None:
    """Run a WebAssembly (WASI) module as a batch job."""


@wasm.command(name="run", context_settings={"allow_interspersed_args": False})
@click.argument("module")
@click.argument("arguments", nargs=-1, metavar="[--] [ARG...]")
@click.option("--entry-point", default="", help="Function to call [default: _start].")
@task_options
@run_options
@output_option
@api_options
@click.pass_context
def wasm_run(
    ctx: click.Context,
    /,
    module: str,
    arguments: tuple[str, ...],
    entry_point: str,
    dry_run: bool,
    wait: bool | None,
    follow: bool,
    id_only: bool,
    wait_timeout_s: float | None,
    output: str | None,
    api_host: str,
    api_port: int,
    **task: Any,
) -> None:
    """Run MODULE with ARGs as a batch job. MODULE is a local .wasm or .wat file (sent inside
    the spec, so the node needs no access to this machine) or an http(s) URL the node
    downloads. Flags come before MODULE.

    Example: meshnode wasm run hello.wasm -- hello world
    """
    from meshnode.cli.build import build_wasm_job, wasm_entry_module

    flags = _task_flags(**task)
    with _usage_errors():
        entry_module = wasm_entry_module(module, cwd=Path.cwd())
    spec = build_wasm_job(entry_module, _after_dashes(arguments), flags, entry_point=entry_point)
    _run_built(
        ctx, spec, dry_run, wait, follow, id_only, wait_timeout_s, output, api_host, api_port
    )


def _after_dashes(arguments: Sequence[str]) -> tuple[str, ...]:
    """Once IMAGE/MODULE is read, click passes everything on, a separating `--` included."""
    return tuple(arguments[1:] if arguments and arguments[0] == "--" else arguments)


def _run_built(
    ctx: click.Context,
    spec: Job,
    dry_run: bool,
    wait: bool | None,
    follow: bool,
    id_only: bool,
    wait_timeout_s: float | None,
    output: str | None,
    api_host: str,
    api_port: int,
) -> None:
    if dry_run:
        _print_spec(spec, output or "yaml")
        return
    options = _run_options(wait, follow, id_only, output, wait_timeout_s)
    ctx.exit(_submit(ctx, spec, options, ApiClient(api_host, api_port)))


def _run_options(
    wait: bool | None,
    follow: bool,
    id_only: bool,
    output: str | None,
    wait_timeout_s: float | None,
) -> RunOptions:
    from meshnode.cli.jobs import RunOptions

    if follow and output is not None:
        raise click.UsageError("--follow prints logs; it cannot be combined with --output")
    if follow and wait is False:
        raise click.UsageError("--follow waits for the job; it cannot be combined with --no-wait")
    return RunOptions(
        wait=wait if wait is not None else not id_only,
        follow=follow,
        id_only=id_only,
        output=output,
        wait_timeout_s=wait_timeout_s,
    )


def _submit(ctx: click.Context, spec: Job, options: RunOptions, client: ApiClient) -> int:
    from meshnode.cli.jobs import run_submitted_job
    from meshnode.spec import encode_job

    return run_submitted_job(
        client,
        _console(ctx),
        encode_job(spec, spec_format="json"),
        job_type=spec.type,
        options=options,
    )


def _print_spec(spec: Job, output: str) -> None:
    from meshnode.spec import encode_job

    click.echo(encode_job(spec, spec_format="json" if output == "json" else "yaml"), nl=False)


# --- agent and node ----------------------------------------------------------------------------


@cli.group(cls=_Group)
def agent() -> None:
    """Ask the node the CLI talks to about itself."""


@agent.command()
@api_options
@output_option
@click.pass_context
def alive(ctx: click.Context, api_host: str, api_port: int, output: str | None) -> None:
    """Check that the node answers."""
    from meshnode.cli.views import field

    console = _console(ctx)
    response = ApiClient(api_host, api_port).get(f"{AGENT_PATH}/alive")
    if output is not None:
        print_data(console, response, output)
        return
    status = field(response, "Status", default=response)
    console.print(str(status if status is not None else "OK"))


@agent.command(name="node")
@api_options
@output_option
@click.pass_context
def agent_node(ctx: click.Context, api_host: str, api_port: int, output: str | None) -> None:
    """Describe the node the CLI talks to, with the mesh addresses other nodes can join it by
    (meshnode start --peers ADDRESS)."""
    from meshnode.cli.views import describe_node

    console = _console(ctx)
    response = ApiClient(api_host, api_port).get(f"{AGENT_PATH}/node")
    if output is not None:
        print_data(console, response, output)
    else:
        describe_node(console, response, now_s=time.time())


@agent.command(name="version")
@api_options
@output_option
@click.pass_context
def agent_version(ctx: click.Context, api_host: str, api_port: int, output: str | None) -> None:
    """Print the client's and the node's versions."""
    from meshnode.cli.views import field

    console = _console(ctx)
    response = ApiClient(api_host, api_port).get(f"{AGENT_PATH}/version")
    if output is not None:
        print_data(console, response, output)
        return
    server = field(response, "GitVersion", default="") or field(response, "Version", default="")
    console.fields([("Client", f"meshnode {__version__}"), ("Server", str(server or "?"))])


@agent.command(name="mesh")
@api_options
@output_option
@click.pass_context
def agent_mesh(ctx: click.Context, api_host: str, api_port: int, output: str | None) -> None:
    """Show the node's view of the mesh: its addresses, peers and counters."""
    from meshnode.cli.views import describe_mesh

    console = _console(ctx)
    response = ApiClient(api_host, api_port).get(f"{AGENT_PATH}/mesh")
    if output is not None:
        print_data(console, response, output)
    else:
        describe_mesh(console, response)


@cli.group(cls=_Group)
def node() -> None:
    """List, describe and approve the nodes of the mesh."""


@node.command(name="list")
@click.option(
    "--labels",
    "selector",
    metavar="SELECTOR",
    help="Only nodes whose labels match, e.g. 'zone=eu,Architecture!=arm64'.",
)
@click.option(
    "--filter-approval",
    type=click.Choice(["approved", "pending", "rejected"], case_sensitive=False),
    default=None,
    help="Only nodes with this approval.",
)
@click.option(
    "--filter-status",
    type=click.Choice(["connected", "disconnected"], case_sensitive=False),
    default=None,
    help="Only nodes that are (dis)connected: alive, or suspect/dead/left.",
)
@api_options
@output_option
@click.pass_context
def list_nodes(
    ctx: click.Context,
    selector: str | None,
    filter_approval: str | None,
    filter_status: str | None,
    api_host: str,
    api_port: int,
    output: str | None,
) -> None:
    """List every node of the mesh, this one included, as a table."""
    from meshnode.cli.jobs import fetch_all_pages
    from meshnode.cli.views import nodes_table

    console = _console(ctx)
    params: dict[str, object] = {
        "labels": selector or None,
        "filter-approval": filter_approval.upper() if filter_approval else None,
        "filter-status": filter_status.upper() if filter_status else None,
    }
    nodes = fetch_all_pages(
        ApiClient(api_host, api_port), NODES_PATH, params, keys=("nodes", "Nodes", "Items")
    )
    if output is not None:
        print_data(console, {"nodes": nodes, "NextToken": ""}, output)
    else:
        nodes_table(console, nodes, now_s=time.time())


@node.command(name="describe")
@click.argument("node_id", metavar="ID")
@api_options
@output_option
@click.pass_context
def describe_node_command(
    ctx: click.Context, node_id: str, api_host: str, api_port: int, output: str | None
) -> None:
    """Describe one node."""
    from meshnode.cli.views import describe_node, field

    console = _console(ctx)
    response = ApiClient(api_host, api_port).get(path_of(NODES_PATH, node_id))
    if output is not None:
        print_data(console, response, output)
    else:
        describe_node(console, field(response, "node", "Node", default=response), now_s=time.time())


def _node_action(action: str, summary: str) -> None:
    """`node approve|reject|delete ID`: Bacalhau's node actions (PUT …/nodes/{id})."""

    @node.command(name=action, help=summary)
    @click.argument("node_id", metavar="ID")
    @click.option(
        "-m", "--message", default="", help="Why (written to the node's log with the action)."
    )
    @api_options
    @output_option
    @click.pass_context
    def command(
        ctx: click.Context,
        node_id: str,
        message: str,
        api_host: str,
        api_port: int,
        output: str | None,
    ) -> None:
        import json

        from meshnode.cli.views import field

        console = _console(ctx)
        body = json.dumps({"NodeID": node_id, "Action": action, "Message": message}).encode()
        response = ApiClient(api_host, api_port).put(path_of(NODES_PATH, node_id), body)
        if output is not None:
            print_data(console, response, output)
        if not field(response, "Success", default=False):
            error = field(response, "Error", default="") or "the node did not say why"
            raise MeshnodeError(f"could not {action} node {node_id}: {error}")
        if output is None:
            text = str(field(response, "Message", default="") or "Ok")
            console.print(text[:1].upper() + text[1:])


_node_action(
    "approve",
    "Approve a node: it gets work.\n\nNeeded under --require-approval; undoes reject and "
    "delete. ID may be a unique prefix of a node id.",
)
_node_action(
    "reject",
    "Reject a node: it gets no more work.\n\nID may be a unique prefix of a node id.",
)
_node_action(
    "delete",
    "Forget a node.\n\nIf it comes back it is listed as rejected and gets no work until "
    "approved. ID may be a unique prefix of a node id.",
)


# --- helpers -----------------------------------------------------------------------------------


def _describe(spec: Job) -> str:
    task = spec.task
    engine = task.engine.type if task.engine is not None else "no engine"
    runs = f"{spec.count} execution{'s' if spec.count != 1 else ''}"
    if spec.type in ("ops", "daemon"):
        runs = "one execution per matching node"
    return f"{engine}, {runs}"


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="meshnode")


if __name__ == "__main__":  # `python -m meshnode.cli.main`, as devstack may start nodes
    main()
