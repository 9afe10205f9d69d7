"""The ``hostd`` command line; plugins add subcommands through ``register_commands``."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import sys
import traceback
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import click
import orjson

from hostd import __version__, plugins, recordfiles
from hostd.configfile import load_settings
from hostd.errors import ConfigError, ConfigErrors, HostdError, ModelLoadError, ModelNotFound, StartupError, innermost
from hostd.observability import configure_logging
from hostd.settings import HostSettings

config_argument = click.argument("config", type=click.Path(dir_okay=False, path_type=Path), envvar="HOSTD_CONFIG")


def load(config: Path) -> tuple[HostSettings, Any]:
    """The settings in ``config``, validated against the installed transports, and the plugin manager."""
    context = click.get_current_context(silent=True)
    pm = context.find_root().obj if context is not None and context.find_root().obj else plugins.plugin_manager()
    known = {name: transport.settings for name, transport in plugins.transports(pm).items()}
    return load_settings(config, known), pm


class ReportConfigErrors(click.Group):
    """Any command's ConfigError: its message (file:line: key: problem), exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"hostd: config error:\n{exc}", err=True)
            _model_tracebacks(exc, ctx.params.get("show_traceback", False))
            ctx.exit(2)


def _model_tracebacks(exc: ConfigError, show: bool) -> None:
    # A model whose own code raised is a bug in the model: its traceback says where.
    failed = [error for error in (exc.errors if isinstance(exc, ConfigErrors) else [exc])
              if isinstance(error, ModelLoadError) and error.__cause__ is not None]
    if failed and not show:
        click.echo("hostd: a model's own code raised; `hostd --traceback ...` shows where", err=True)
    for error in failed if show else []:
        cause = error.__cause__
        assert cause is not None
        click.echo("".join(traceback.format_exception(cause)), err=True, nl=False)


@click.group(cls=ReportConfigErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hostd")
@click.option("--traceback", "show_traceback", is_flag=True,
              help="When a model fails to load, print the traceback of its exception.")
def cli(show_traceback: bool) -> None:
    """hostd: serve many ML models over HTTP, gRPC, WebSocket, ZeroMQ, Kafka and arq."""
    configure_logging("warning")  # `run` reconfigures from the config


@cli.command()
@config_argument
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto", show_default=True)
def run(config: Path, log_format: str) -> None:
    """Serve every model in CONFIG on every configured transport until SIGTERM or Ctrl-C."""
    settings, pm = load(config)
    configure_logging(settings.log_level, log_format, settings.logging)
    _serve(settings, pm)


@cli.command(name="serve")
@click.argument("target")
@click.option("--name", default=None, help="The model's name (default: the file's name without extension).")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address every transport listens on.")
@click.option("--port", type=int, default=8080, show_default=True,
              help="HTTP's port; each further transport takes the next one.")
@click.option("--transports", default="http,grpc", show_default=True, help="Comma-separated: http, grpc, ws, zmq.")
@click.option("--trust", is_flag=True, help="Load a joblib or pickle file (loading one runs the code it holds).")
def serve_command(target: str, name: str | None, host: str, port: int, transports: str, trust: bool) -> None:
    """Serve one model file (.skops, .joblib, XGBoost .json/.ubj, LightGBM .txt) or one model class
    (package.module:Class) with no config: HTTP and gRPC on 127.0.0.1, until Ctrl-C."""
    import yaml

    from hostd import serve
    from hostd.configfile import parse_settings

    pm = click.get_current_context().find_root().obj or plugins.plugin_manager()
    sections = serve.config(target, name=name, host=host, port=port, trust=trust,
                            transports=[t.strip() for t in transports.split(",") if t.strip()])
    known = {name: transport.settings for name, transport in plugins.transports(pm).items()}
    settings = parse_settings(yaml.safe_dump(sections), serve.SOURCE, known, os.environ)
    configure_logging(settings.log_level)
    _serve(settings, pm, lambda dataplane: click.echo(serve.banner(dataplane.models()[0], sections["transports"])))


@cli.command()
@click.argument("name")
@click.option("--kind", type=click.Choice(["classifier", "regressor"]), default="classifier", show_default=True,
              help="The starting estimator: trained on scikit-learn's iris (classifier) or diabetes (regressor) data.")
@click.option("--directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to create the package's folder.")
def new(name: str, kind: str, directory: Path) -> None:
    """Create an installable model package NAME (schemas, model class, training script, tests) and train it."""
    from hostd import scaffold

    root = scaffold.create(name, kind, directory)
    cls = scaffold.class_name(name)
    click.echo(f"created {root} and trained it ({root / 'src' / name / 'model_files' / 'model.skops'})\n"
               f"  pip install -e '{root}[test]' && pytest {root}\n"
               f"  then serve it: hostd serve {name}.model:{cls}  (or class_path: {name}.model:{cls} in host.yaml)")


def _serve(settings: HostSettings, pm: Any, announce: Any = None) -> None:
    """Run the daemon until it stops; ``announce(dataplane)`` once it is ready."""
    from hostd import daemon

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            dataplane = await tg.start(daemon.serve, settings, pm)
            if announce is not None:
                announce(dataplane)

    try:
        anyio.run(main, backend_options={"use_uvloop": _has_uvloop()})
    except BaseExceptionGroup as group:
        # The task group wraps what the daemon raised: a config error (a model that does not load)
        # goes on to ReportConfigErrors as itself; a transport that cannot start is a one-line error.
        misconfigured = group.subgroup(ConfigError)
        if misconfigured is not None:
            raise innermost(misconfigured) from None
        failed = group.subgroup(StartupError)
        if failed is None:
            raise
        raise click.ClickException(str(innermost(failed))) from None


@cli.command()
@config_argument
@click.option("--pid", type=int, default=None,
              help="Send SIGHUP to this hostd process instead; its log says what was applied.")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the models to load.")
@click.option("--api-key", envvar="HOSTD_API_KEY", default=None,
              help="A key with the admin scope, if auth is on (or the environment variable HOSTD_API_KEY).")
@click.option("--cacert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The CA that signs the daemon's certificate, if its HTTP transport uses TLS.")
def reload(config: Path, pid: int | None, timeout_s: float, api_key: str | None, cacert: Path | None) -> None:
    """Make the hostd serving CONFIG re-read it (and its model repository) and apply the difference:
    new models load, removed ones unload, changed ones reload. Asks the daemon over its HTTP transport
    (POST /api/admin/reload; needs admin: {enabled: true}), and prints what changed."""
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
        click.echo(f"sent SIGHUP to {pid}")
        return
    try:
        settings, _ = load(config)
    except ConfigError as exc:
        click.echo(f"hostd: config error:\n{exc}\nhostd: nothing was sent; the running hostd goes on serving "
                   "its current config", err=True)
        sys.exit(2)
    if settings.transports.get("http") is None:
        raise click.ClickException(f"{config} serves no http transport: send SIGHUP instead (hostd reload --pid PID)")
    click.echo(ask_daemon(settings, "/api/admin/reload", api_key, cacert, timeout_s, method="POST").decode())


def ask_daemon(settings: HostSettings, path: str, api_key: str | None, cacert: Path | None, timeout_s: float,
               method: str = "GET") -> bytes:
    """The body of the running daemon's answer to ``method path`` on its HTTP transport (as configured)."""
    import urllib.error  # here: only these commands talk HTTP, and `hostd run` starts sooner without it
    import urllib.request

    http = settings.transports.get("http")
    if http is None:
        raise click.ClickException(f"{settings.source} serves no http transport to ask the daemon over")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(http.host, http.host)
    scheme = "https" if http.tls is not None else "http"
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{http.port}{path}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None, headers=headers)
    context = ssl.create_default_context(cafile=cacert) if scheme == "https" else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return response.read()  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        raise click.ClickException("\n".join(body.get("messages") or [str(exc)])) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach hostd at {url}: {exc}") from None


@cli.command()
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["infer", "read", "admin"]),
              default=("infer", "read"), show_default=True, help="Repeatable.")
def key(name: str, scopes: tuple[str, ...]) -> None:
    """Make a new API key NAME: prints the key (give it to the client, once) and the auth.keys entry
    for host.yaml, which holds only its SHA-256."""
    from hostd.auth import new_key

    secret, digest = new_key()
    click.echo(f"key (shown once; hostd keeps only its hash): {secret}", err=True)
    click.echo(f"- {{name: {name}, sha256: {digest}, scopes: [{', '.join(dict.fromkeys(scopes))}]}}")


@cli.command()
@config_argument
def check(config: Path) -> None:
    """Validate CONFIG and load its models; one line per model."""
    from hostd.registry import Registry

    settings, _ = load(config)
    for served in Registry.from_settings(settings):
        click.echo(f"{served.name}\t{served.version}\tdeterministic={str(served.deterministic).lower()}")


@cli.command()
@config_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--live", is_flag=True,
              help="Ask the hostd serving CONFIG (over its HTTP transport) for each version's live quality, "
                   "from ground-truth feedback.")
@click.option("--api-key", envvar="HOSTD_API_KEY", default=None, help="A key with the read scope, if auth is on.")
@click.option("--cacert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The CA that signs the daemon's certificate, if its HTTP transport uses TLS.")
def models(config: Path, as_json: bool, live: bool, api_key: str | None, cacert: Path | None) -> None:
    """Print each model's metadata with its input and output JSON Schemas (--live: the running daemon's
    quality figures per version instead)."""
    from hostd.registry import Registry

    settings, _ = load(config)
    if live:
        _print_quality(json.loads(ask_daemon(settings, "/api/quality", api_key, cacert, 10.0))["quality"], as_json)
        return
    metadata = [served.metadata() for served in Registry.from_settings(settings)]
    if as_json:
        click.echo(json.dumps(metadata, indent=2))
        return
    for item in metadata:
        click.echo(f"{item['qualified_name']} {item['version']}  {item['display_name']}")
        click.echo(f"  {item['description']}")
        click.echo(f"  deterministic: {str(item['deterministic']).lower()}")
        click.echo("  input schema:  " + json.dumps(item["input_schema"]))
        click.echo("  output schema: " + json.dumps(item["output_schema"]))


def _print_quality(quality: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(quality, indent=2))
        return
    if not quality:
        click.echo("no labels yet (POST /api/models/NAME/feedback, or feedback: is off)")
    for item in quality:
        figures = "  ".join(f"{key} {item[key]:.4g}" for key in ("accuracy", "mae", "rmse") if key in item)
        click.echo(f"{item['model']} {item['version']}  {figures}  ({item['labels']} labels, {item['kind']})")


@cli.command()
@config_argument
@click.argument("model")
@click.argument("data")
@click.option("--version", "model_version", default=None, help="Model version (default: the latest).")
def predict(config: Path, model: str, data: str, model_version: str | None) -> None:
    """Predict DATA (a JSON object, or - for stdin) with MODEL, in-process (only MODEL is loaded)."""
    from hostd.dataplane import DataPlane
    from hostd.registry import Registry

    settings, _ = load(config)
    try:
        payload = orjson.loads(sys.stdin.read() if data == "-" else data)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="DATA") from None
    configure_logging("critical")  # the error is the command's own output, once

    registry = Registry.from_settings(settings, only=model)

    async def one() -> dict[str, Any]:
        if model not in registry.names():
            served = sorted({entry.split()[0] for entry in registry.passed_over})
            raise ModelNotFound(f"model '{model}' is not served here (served: {', '.join(served) or 'none'})")
        dataplane = DataPlane(registry)
        dataplane.set_ready()
        return (await dataplane.predict(model, payload, model_version, transport="cli")).output

    try:
        click.echo(json.dumps(anyio.run(one)))
    except HostdError as exc:
        raise click.ClickException(f"{exc.code.value}: {exc.message}") from None


@cli.command(context_settings={"show_default": True})
@config_argument
@click.option("--model", required=True, help="Model name (its qualified_name).")
@click.option("--version", "model_version", default=None, help="Model version (default: the latest).")
@click.option("--input", "input_path", required=True,
              help="A file; for an engine that writes its own output, also a URL (s3://, gs://, hdfs://).")
@click.option("--output", "output_path", required=True,
              help="A file; for an engine that writes its own output, a directory or a URL, committed with _SUCCESS.")
@click.option("--errors", "errors_path",
              help="Failed rows (row, id, code, message)  [default: OUTPUT with .errors before the extension]")
@click.option("--engine", default="local", help="local, beam, mapreduce, spark or ray (any registered engine).")
@click.option("--format", "fmt", type=click.Choice(recordfiles.FORMATS), default=None,
              help="Input and output format  [default: from each file's extension]")
@click.option("--workers", type=click.IntRange(min=1), default=1,
              help="local: processes; ray: model replicas (actors); beam: DirectRunner workers.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1024, help="Rows per predict_batch call.")
@click.option("--allow-errors", is_flag=True, help="Exit 0 even if some rows failed.")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: on a terminal]")
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
def batch(config: Path, model: str, model_version: str | None, input_path: str, output_path: str,
          errors_path: str | None, engine: str, fmt: str | None, workers: int, chunk_size: int,
          allow_errors: bool, progress: bool | None, engine_args: tuple[str, ...]) -> None:
    """Score INPUT with MODEL into OUTPUT, offline: one output row per input row, or one error row.

    Options after `--` go to the engine: Beam pipeline options (--runner=FlinkRunner ...), mrjob
    switches (-r local ...), Spark's (--master spark://... --conf k=v) or Ray's (--address ...).
    """
    from hostd.offline import BatchJob, Scorer, run_job
    from hostd.partitions import path_of, shown, sibling

    engines = plugins.batch_engines(click.get_current_context().find_root().obj or plugins.plugin_manager())
    if engine not in engines:
        raise click.BadParameter(f"no batch engine '{engine}' (installed: {', '.join(sorted(engines))}; "
                                 "beam, mapreduce, spark and ray need hostd[beam], hostd[mapreduce], hostd[spark] "
                                 "and hostd[ray])", param_hint="--engine")
    writes_itself = engines[engine].write is not None
    if not (writes_itself and _is_url(input_path)) and not Path(input_path).is_file():
        raise click.BadParameter(f"no such file: {input_path}", param_hint="--input")
    try:
        input_format = recordfiles.detect_format(PurePosixPath(path_of(input_path)), fmt)
        output_format = recordfiles.detect_format(PurePosixPath(path_of(output_path)), fmt)
        if output_format not in engines[engine].output_formats:
            writes = " or ".join(engines[engine].output_formats)
            raise ValueError(f"the {engine} engine writes {writes}, not {output_format}")
        columns = Scorer.load(config, model, model_version).output_columns()  # checks the model is there
    except (ValueError, HostdError) as exc:
        raise click.UsageError(str(exc)) from None
    errors_path = errors_path or sibling(output_path, ".errors")
    job = BatchJob(config.resolve(), model, model_version, _located(input_path), _located(output_path),
                   _located(errors_path), input_format, output_format, workers, chunk_size, engine_args,
                   sys.stderr.isatty() if progress is None else progress)
    try:
        summary = run_job(job, engines[engine], columns, progress)
    except Exception as exc:
        if not writes_itself:
            raise
        # A cluster engine's failure carries its workers' tracebacks (a JVM's, a Python worker's):
        # the user gets the cause, and the engine's own log above has the rest.
        raise click.ClickException(f"the {engine} job failed, and committed nothing: {_cause(exc)}") from None
    click.echo(f"hostd batch: {summary.line()}", err=True)
    if summary.committed:
        click.echo(f"hostd batch: committed {shown(summary.committed)}", err=True)
    if summary.failed:
        click.echo(f"hostd batch: failed rows are in {shown(summary.errors or job.errors)}", err=True)
        if not allow_errors:
            sys.exit(1)


def _cause(exc: BaseException) -> str:
    """The last line of an engine's error that names an exception (its innermost cause)."""
    lines = [line.strip().removeprefix("Caused by: ") for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.$]+(Error|Exception|Invalid|Exit|Interrupt)\b", line)]
    return (named or lines or [type(exc).__name__])[-1][:500]


def _is_url(location: str) -> bool:
    return "://" in location


def _located(location: str) -> str:
    """A URL as it is; a path made absolute (an engine's workers do not share our working directory)."""
    return location if _is_url(location) else str(Path(location).resolve())


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    # As uvicorn does: class paths in the config may name modules in the current directory.
    sys.path.insert(0, os.getcwd())
    pm = plugins.plugin_manager()
    pm.hook.register_commands(cli=cli)
    cli(prog_name="hostd", obj=pm)
