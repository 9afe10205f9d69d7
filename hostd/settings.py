"""host.yaml: typed settings that reject typos and say where they are."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from hostd.errors import ConfigError, ConfigErrors
from hostd.runtimes import expand_uri
from hostd.tracing import TracingSettings

Loc = tuple[str | int, ...]
MODEL_FILE_SUFFIXES = (".yaml", ".yml")  # a model repository's entries
#: What shared() gives for a transport section not yet validated that leaves the key out (the plugins' defaults).
_TRANSPORT_DEFAULTS = {("arq", "redis_url"): "redis://127.0.0.1:6379/0",
                       ("kafka", "bootstrap_servers"): "127.0.0.1:9092"}


def _none_to_empty_dict(value: Any) -> Any:
    # rest-model-service writes `configuration:` with no value for "no arguments".
    return {} if value is None else value


def _none_to_empty_list(value: Any) -> Any:
    return [] if value is None else value


Kwargs = Annotated[dict[str, Any], BeforeValidator(_none_to_empty_dict)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSettings(Strict):
    """A class to import and the keyword arguments to build it with."""

    class_path: str = Field(description='"package.module:Class" or "package.module.Class"')
    configuration: Kwargs = Field(default_factory=dict)


class WorkerSettings(Strict):
    kind: Literal["thread", "process"] = "thread"
    count: int = Field(default=1, ge=1, le=256)
    # Process workers forked from one loaded copy of the model (hostd.zygote). false: each loads its
    # own, for models whose libraries are not safe to fork once loaded (e.g. they start threads).
    share_memory: bool = True


class BatchingSettings(Strict):
    """Adaptive batching across requests; max_batch_size 1 turns it off."""

    max_batch_size: int = Field(default=64, ge=1, le=65536)
    max_delay_ms: float = Field(default=2.0, ge=0, le=10_000)  # only while other batches run


DEFAULT_CACHE_BYTES = 256 << 20


class CacheSettings(Strict):
    """Keep each row's answer, so an input seen before is answered without the model (hostd.cache).
    Deterministic models only. Memory: bounded by max_entries (default 10,000) and max_bytes (default
    256 MiB)."""

    backend: Literal["memory", "redis"] = "memory"
    max_entries: int | None = Field(default=None, ge=1)
    max_bytes: int | None = Field(default=None, ge=1024)
    ttl_s: float | None = Field(default=None, gt=0)  # none: kept until evicted (memory) or for ever (redis)
    # redis: shared by every replica. Default: the arq transport's redis_url.
    redis_url: str | None = None
    key_prefix: str = "hostd:cache:"
    timeout_ms: float = Field(default=50, gt=0)  # a Redis call slower than this counts as an outage

    @model_validator(mode="after")
    def _a_bound(self) -> CacheSettings:
        if self.backend == "memory" and self.max_entries is None and self.max_bytes is None:
            self.max_entries = 10_000
        if self.backend == "memory" and self.max_bytes is None:
            self.max_bytes = DEFAULT_CACHE_BYTES  # entries alone do not bound memory: outputs may be big
        if self.backend == "redis" and (self.max_entries is not None or self.max_bytes is not None):
            raise ValueError("max_entries and max_bytes bound the memory backend; bound Redis with its own "
                             "maxmemory (and ttl_s)")
        return self


class ModelFeedbackSettings(Strict):
    """Which output field a ground-truth label is compared with, and how (default: the output schema's
    first field; a float field is a regression, anything else a classification)."""

    field: str | None = None
    kind: Literal["classification", "regression"] | None = None


class ModelSettings(ComponentSettings):
    decorators: Annotated[list[ComponentSettings], BeforeValidator(_none_to_empty_list)] = Field(
        default_factory=list
    )
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    timeout_ms: int = Field(default=2000, gt=0)
    max_pending: int = Field(default=1024, ge=1)
    # The most one client (a connection, a ZeroMQ peer) may have pending, so no one client can fill
    # max_pending alone. Default: a quarter of max_pending.
    max_pending_per_client: int | None = Field(default=None, ge=1)
    cache: CacheSettings | None = None  # answers kept per input row (deterministic models only)
    feedback: ModelFeedbackSettings = Field(default_factory=ModelFeedbackSettings)
    # rest-model-service: false loads the model (it is listed) but serves no predictions.
    create_endpoint: bool = True
    # rest-model-service (before 0.5) named each model here; if given, it must match the model.
    qualified_name: str | None = None

    # ``- uri: models/iris.skops``: short for the runtime that serves the file (hostd.runtimes).
    _uri_names_a_runtime = model_validator(mode="before")(expand_uri)

    @model_validator(mode="after")
    def _per_client_within_max_pending(self) -> ModelSettings:
        if self.max_pending_per_client is None:
            self.max_pending_per_client = max(1, self.max_pending // 4)
        elif self.max_pending_per_client > self.max_pending:
            raise ValueError(f"max_pending_per_client ({self.max_pending_per_client}) cannot exceed "
                             f"max_pending ({self.max_pending})")
        return self


class AdminSettings(Strict):
    """The calls that change what is served (load, unload, reload): off unless enabled."""

    enabled: bool = False


class ShadowSettings(Strict):
    """Mirror a share of a model's unversioned requests to another version, off the request's path."""

    version: str
    share: float = Field(default=1.0, gt=0, le=1)
    max_queue: int = Field(default=256, ge=1)  # requests waiting for the shadow; more are dropped, counted


class RoutingSettings(Strict):
    """Which version answers a request for a model that names no version."""

    default_version: str | None = None  # pinned; default: the newest loaded
    serve_newest: int | None = Field(default=None, ge=1)  # serve only the newest N loaded versions
    traffic: dict[str, float] | None = None  # canary weights by version, e.g. {"1.0.0": 90, "2.0.0": 10}
    shadow: ShadowSettings | None = None

    @model_validator(mode="after")
    def _weights_are_positive(self) -> RoutingSettings:
        if self.traffic is not None and (not self.traffic or any(w < 0 for w in self.traffic.values())
                                         or not sum(self.traffic.values()) > 0):
            raise ValueError("traffic: give each version a weight >= 0, at least one of them > 0")
        return self


ScopeName = Literal["infer", "read", "admin"]


class ApiKeySettings(Strict):
    """One API key, stored as the SHA-256 of the key (``hostd key NAME`` makes a key and its hash)."""

    name: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # hex digest of the key
    sha256_file: str | None = None  # a file holding it (a mounted secret); relative to the config's folder
    scopes: list[ScopeName] = Field(default_factory=lambda: list[ScopeName](["infer", "read"]))
    models: list[str] | None = None  # only these models (default: every one)

    @model_validator(mode="after")
    def _one_hash(self) -> ApiKeySettings:
        if (self.sha256 is None) == (self.sha256_file is None):
            raise ValueError("give the key's hash as exactly one of sha256 or sha256_file")
        return self


class AuthSettings(Strict):
    """API keys: with this section every call needs one (except what is left open below)."""

    keys: list[ApiKeySettings] = Field(min_length=1)
    open_health: bool = True  # liveness and readiness without a key (Kubernetes probes)
    open_metrics: bool = False  # /metrics without a key (else: the read scope)
    open_docs: bool = False  # /docs and /openapi.json without a key (else: the read scope)

    @model_validator(mode="after")
    def _unique_names(self) -> AuthSettings:
        names = [key.name for key in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("each key needs its own name")
        return self


class RateLimitSettings(Strict):
    """A token bucket per API key (per client address without keys): per_s refill, burst size."""

    per_s: float = Field(gt=0)
    burst: int = Field(default=1, ge=1)


class PredictionLogSettings(Strict):
    """A record of every sampled prediction, on every transport, errors included (hostd.predictionlog)."""

    sink: Literal["file", "kafka"]
    sample: float = Field(default=1.0, ge=0, le=1)  # the share of requests recorded
    buffer: int = Field(default=10_000, ge=1)  # records waiting for the sink; more are dropped and counted
    buffer_bytes: int = Field(default=64 << 20, ge=1024)  # and at most this many bytes of them
    # file: a directory (relative to the config's folder) of files rotated by size or age
    path: str = "prediction-log"
    format: Literal["jsonl", "parquet"] = "jsonl"  # parquet needs pyarrow
    rotate_bytes: int = Field(default=64 << 20, ge=1024)
    rotate_s: float | None = Field(default=3600, gt=0)
    max_files: int | None = Field(default=100, ge=1)  # the oldest files beyond this are deleted (null: keep all)
    # kafka: default the kafka transport's brokers (and its security settings)
    bootstrap_servers: str | None = None
    topic: str = "hostd.prediction-log"
    # A bigger record is dropped alone (and counted): the broker refuses a batch over its message.max.bytes
    # (Kafka's default: 1 MiB), and would fail the whole batch.
    max_record_bytes: int = Field(default=1_000_000, ge=1024)


class FeedbackSettings(Strict):
    """Ground-truth labels joined with the predictions they are for (hostd.feedback)."""

    remember: int = Field(default=100_000, ge=1)  # rows of recent predictions kept in memory to join labels with
    window: int = Field(default=1_000, ge=1, le=100_000)  # labelled rows per model version in each quality figure


Startup = Literal["all", "none"] | list[str]


class HostSettings(Strict):
    models: list[ModelSettings] = Field(default_factory=list)
    # A directory of model entries, one YAML file each (same keys as an item of `models:`), that can
    # be loaded at run time without touching this file. Relative to this file's directory.
    model_repository: str | None = None
    startup: Startup = "all"  # what loads at start: every entry, none, or the models named
    admin: AdminSettings = Field(default_factory=AdminSettings)
    routing: dict[str, RoutingSettings] = Field(default_factory=dict)  # by model name
    watch: bool = False  # reload on a change to this file or the repository directory
    auth: AuthSettings | None = None  # API keys with scopes (none: every call is allowed)
    rate_limit: RateLimitSettings | None = None
    prediction_log: PredictionLogSettings | None = None
    feedback: FeedbackSettings | None = None  # ground-truth labels (POST /api/models/{name}/feedback)
    tracing: TracingSettings | None = None  # OpenTelemetry spans (none: the OTEL_* variables, else off)
    # Validated per transport by the settings class its plugin registers; no section = HTTP only.
    transports: dict[str, Any] = Field(default_factory=lambda: {"http": {}})
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Accepted so that a rest-model-service configuration loads unchanged.
    service_title: str = "hostd"
    description: str = ""
    version: str = "0.1.0"
    logging: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    _source: str = PrivateAttr(default="<settings>")
    _lines: dict[Loc, int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _some_models(self) -> HostSettings:
        if not self.models and self.model_repository is None:
            raise ValueError("give at least one model under 'models:' or a 'model_repository:' directory")
        return self

    def where(self, loc: Loc) -> str:
        """``file:line`` of the YAML node at ``loc`` (or its nearest parent)."""
        return where_in(self._source, self._lines, loc)

    @property
    def source(self) -> str:
        """The file these settings were read from ("<settings>" if none)."""
        return self._source

    @property
    def folder(self) -> Path:
        """Where relative paths in these settings start: the config file's folder."""
        return Path(self._source).parent if self._source != "<settings>" else Path.cwd()

    def repository_path(self) -> Path | None:
        if self.model_repository is None:
            return None
        return self.folder / self.model_repository

    def model_entries(self) -> list[ModelEntry]:
        """Every model entry: the items of ``models:``, then one per YAML file of ``model_repository``
        (in name order). Every problem is reported, not just the first."""
        entries = [ModelEntry(model, functools.partial(self._where_in_models, index))
                   for index, model in enumerate(self.models)]
        problems = []
        directory = self.repository_path()
        if directory is not None and not directory.is_dir():
            problems.append(ConfigError(f"{self.where(('model_repository',))}: model_repository: {directory} "
                                        "is not a directory"))
        elif directory is not None:
            for path in sorted(directory.iterdir()):
                if path.suffix not in MODEL_FILE_SUFFIXES:
                    continue
                try:
                    from hostd import configfile  # reads files against this schema: imported where used
                    entries.append(ModelEntry(*configfile.load_model_file(path), file_name=path.stem))
                except ConfigError as exc:
                    problems.append(exc)
        for entry in entries:
            cache = entry.settings.cache
            if cache is not None and cache.backend == "redis" and cache.redis_url is None:
                cache.redis_url = self.shared("arq", "redis_url")
                if cache.redis_url is None:
                    problems.append(ConfigError(f"{entry.where('cache')}: cache: the redis backend needs a "
                                                "redis_url (or an arq transport, whose Redis it then shares)"))
        if problems:
            raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
        return entries

    def shared(self, transport: str, key: str) -> Any:
        """A transport's setting that another part shares (the arq transport's Redis, the kafka
        transport's brokers); None if that transport is not configured. Validated settings, or the
        section as written (before the transports are validated), with the transport's default."""
        if transport not in self.transports:
            return None
        section = self.transports[transport]
        if isinstance(section, BaseModel):
            return getattr(section, key, None)
        return (section or {}).get(key) or _TRANSPORT_DEFAULTS.get((transport, key))

    def _where_in_models(self, index: int, *keys: Any) -> str:
        return self.where(("models", index, *keys))


class ModelEntry(NamedTuple):
    settings: ModelSettings
    where: Callable[..., str]  # where(*keys): "file:line" of a key in the entry
    file_name: str | None = None  # a repository file's name without its extension: the model's name


def where_in(source: str, lines: Mapping[Loc, int], loc: Loc) -> str:
    """"file:line" of the key at ``loc`` (or of its nearest parent the file has a line for)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return f"{source}:{lines[loc[:end]]}"
    return source
