"""One typed, frozen settings object, built once at the edge from flags and the environment."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.core.layout import DAY_MS, LONGEST_WINDOW_MS
from stream.core.ordering import DEFAULT_LATENESS_MS
from stream.errors import ConfigError

__all__ = ["ALERTS_TOPIC", "DLQ_TOPIC", "LEVELS_TOPIC", "Settings", "host_port", "load_settings", "mask_url"]

_NS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Redis state must outlive the longest window plus a margin (an idle user's next event still sees
# its whole history): 28 d + 1 d
MIN_STATE_TTL_S = (LONGEST_WINDOW_MS + DAY_MS) // 1000
ALERTS_TOPIC = "risk.alerts"
DLQ_TOPIC = "risk.dlq"
LEVELS_TOPIC = "risk.levels"


class Settings(BaseSettings):
    """riskstream configuration; every field can be set as ``RISKSTREAM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_", frozen=True, extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Kafka security, named as librdkafka names them (stream/kafka_conf.py, docs/security.md)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None  # PEM CA bundle; None: the system's trust store
    kafka_ssl_certificate_location: Path | None = None  # client certificate (PEM), for mutual TLS
    kafka_ssl_key_location: Path | None = None  # its private key (PEM)
    kafka_ssl_key_password: SecretStr | None = None  # when that key is encrypted
    kafka_ssl_endpoint_identification_algorithm: Literal["https", "none"] = "https"  # broker hostname check
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_ssl_ca_location: Path | None = None  # PEM CA bundle for rediss:// URLs; None: the system's
    redis_cluster: bool = False  # the URL names one node of a Redis Cluster
    # A state write is done when this many replicas acknowledged it (WAIT); None: 1 on a Redis Cluster
    # (a failover then loses no write whose offsets were committed), 0 standalone
    redis_wait_replicas: int | None = Field(default=None, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)  # per WAIT; short: re-sent and retried
    state_key_secret: SecretStr | None = None  # pseudonymise user ids in Redis keys (HMAC-SHA-256)
    namespace: str = ""
    partitions: int = Field(default=6, ge=1, le=1024)
    replication_factor: int | None = Field(default=None, ge=1, le=16)  # None: 3 on >= 3 brokers, else 1
    input_retention_ms: int = Field(default=8 * 86_400_000 + 3_600_000, ge=8 * 86_400_000)
    model_path: Path | None = None
    policy_config: Path | None = None
    lateness_ms: int = Field(default=DEFAULT_LATENESS_MS, ge=0, le=3_600_000)
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    batch_wait_s: float = Field(default=0.2, gt=0, le=60)
    idle_ms: int = Field(default=2000, ge=0)
    state_ttl_s: int = 30 * 86_400
    state_cache_users: int = Field(default=100_000, ge=100)
    consumer_group: str = "riskstream"
    buffer_max_events: int = Field(default=100_000, ge=100)
    produce_timeout_s: float = Field(default=30.0, gt=0, le=600)
    commit_interval_s: float = Field(default=1.0, gt=0, le=60)
    checkpoint_ms: int = Field(default=1000, ge=0, le=600_000)  # state written (and acked) at most this often; 0: every step
    metrics_port: int = Field(default=0, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    http_addr: str | None = None  # host:port of /livez, /readyz, /metrics; off when unset
    detector_process: bool = True  # the pipeline in a child process (both cores), else in a thread
    # append every step a pipeline process receives to this file (raw input: user ids and events;
    # created 0600), for bench/replay_steps.py; off when unset (stream/live/recording.py)
    record_steps: Path | None = None
    # pipeline child processes of a worker, its input partitions sharded across them (p % N);
    # default: one per core beyond the Faust process's, at most MAX_DEFAULT_PIPELINES
    pipelines: int = Field(default_factory=lambda: default_pipelines(), ge=1, le=64)
    dlq_max_original_bytes: int = Field(default=4096, ge=0, le=256 * 1024)  # of a bad message, in its DLQ record
    dlq_keep_original: bool = True  # False: DLQ records keep no input bytes (hash, size, reason, place only)
    poison_max_attempts: int = Field(default=3, ge=1, le=100)  # a suspect message alone, before quarantine

    @field_validator("kafka_ssl_ca_location", "kafka_ssl_certificate_location", "kafka_ssl_key_location",
                     "redis_ssl_ca_location")
    @classmethod
    def _readable_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        """An existing PEM file of the right kind (a client would otherwise fail later, less clearly)."""
        if v is None:
            return v
        if not v.is_file():
            raise ValueError(f"no such file: {str(v)!r}")
        key = info.field_name == "kafka_ssl_key_location"
        want, what = ("PRIVATE KEY-----", "private key") if key else ("BEGIN CERTIFICATE-----", "certificate")
        try:
            pem = v.read_text(encoding="ascii", errors="replace")
        except OSError as e:
            raise ValueError(f"cannot read {str(v)!r}: {e.strerror}") from e
        if want not in pem:
            raise ValueError(f"{str(v)!r} is not a PEM file with a {what}")
        return v

    @model_validator(mode="after")
    def _security(self) -> Settings:
        proto = self.kafka_security_protocol
        sasl = proto.startswith("SASL_")
        if sasl and (not self.kafka_sasl_username or self.kafka_sasl_password is None):
            raise ValueError(f"RISKSTREAM_KAFKA_SECURITY_PROTOCOL={proto} needs RISKSTREAM_KAFKA_SASL_USERNAME "
                             "and RISKSTREAM_KAFKA_SASL_PASSWORD")
        if not sasl and (self.kafka_sasl_username or self.kafka_sasl_password is not None):
            raise ValueError(f"SASL credentials are set but RISKSTREAM_KAFKA_SECURITY_PROTOCOL is {proto} "
                             "(SASL_SSL or SASL_PLAINTEXT uses them)")
        tls_files = (self.kafka_ssl_ca_location, self.kafka_ssl_certificate_location, self.kafka_ssl_key_location)
        if not proto.endswith("SSL") and any(f is not None for f in tls_files):
            raise ValueError(f"RISKSTREAM_KAFKA_SSL_* files are set but RISKSTREAM_KAFKA_SECURITY_PROTOCOL is {proto} "
                             "(SSL or SASL_SSL uses them)")
        if (self.kafka_ssl_certificate_location is None) != (self.kafka_ssl_key_location is None):
            raise ValueError("RISKSTREAM_KAFKA_SSL_CERTIFICATE_LOCATION and RISKSTREAM_KAFKA_SSL_KEY_LOCATION "
                             "go together (a client certificate and its key)")
        if "pipelines" in self.model_fields_set and self.pipelines > 1 and not self.detector_process:
            raise ValueError(f"RISKSTREAM_PIPELINES={self.pipelines} needs RISKSTREAM_DETECTOR_PROCESS=true "
                             "(a pipeline in a thread is always one)")
        if self.redis_ssl_ca_location is not None and not self.redis_tls:
            raise ValueError("RISKSTREAM_REDIS_SSL_CA_LOCATION is set but RISKSTREAM_REDIS_URL is not rediss:// "
                             "(TLS)")
        return self

    @property
    def redis_replicas_to_wait(self) -> int:
        """How many replicas must acknowledge a state write (``redis_wait_replicas`` resolved)."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_cluster else 0

    @property
    def redis_tls(self) -> bool:
        """Whether the Redis URL asks for TLS (``rediss://``)."""
        return self.redis_url.get_secret_value().lower().startswith("rediss://")

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if v and not _NS_RE.match(v):
            raise ValueError("namespace must be 1-64 of [A-Za-z0-9_-], starting alphanumeric")
        return v

    @field_validator("state_key_secret")
    @classmethod
    def _key_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 bytes (e.g. `openssl rand -hex 32`)")
        return v

    @property
    def key_secret(self) -> bytes | None:
        """The pseudonymisation key of Redis user keys, or None (user ids in keys as they are)."""
        return None if self.state_key_secret is None else self.state_key_secret.get_secret_value().encode()

    @field_validator("http_addr")
    @classmethod
    def _http_addr(cls, v: str | None) -> str | None:
        if v:
            host_port(v)
        return v or None

    @field_validator("state_ttl_s")
    @classmethod
    def _ttl(cls, v: int) -> int:
        if v < MIN_STATE_TTL_S:
            raise ValueError(f"must be at least {MIN_STATE_TTL_S} s (the longest window, "
                             f"{LONGEST_WINDOW_MS // DAY_MS} days, plus 1 day), got {v}")
        return v

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        for hp in v.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port…], got {v!r}")
        return v

    # -- names ------------------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def clicks_topic(self) -> str:
        return self.topic("events.clicks")

    @property
    def views_topic(self) -> str:
        return self.topic("events.views")

    @property
    def input_kinds(self) -> dict[str, str]:
        """Input topic -> the event type its messages carry."""
        return {self.clicks_topic: "click", self.views_topic: "view"}

    @property
    def alerts_topic(self) -> str:
        return self.topic(ALERTS_TOPIC)

    @property
    def dlq_topic(self) -> str:
        return self.topic(DLQ_TOPIC)

    @property
    def levels_topic(self) -> str:
        return self.topic(LEVELS_TOPIC)

    @property
    def group_id(self) -> str:
        return f"{self.namespace}.{self.consumer_group}" if self.namespace else self.consumer_group

    @property
    def key_prefix(self) -> str:
        """Prefix of every Redis key (docs/state-layout.md §1)."""
        return f"{self.namespace}:rs:" if self.namespace else "rs:"

    def masked(self) -> dict[str, Any]:
        """Settings for printing at start-up: no password (Redis URL, Kafka SASL, key) is ever shown."""
        d = self.model_dump()
        d["redis_url"] = mask_url(self.redis_url.get_secret_value())
        for k, v in d.items():
            if isinstance(v, SecretStr):
                d[k] = "***"
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


MAX_DEFAULT_PIPELINES = 8  # past this, the Faust process's per-message cost bounds a worker anyway


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity (taskset, a cpuset), capped by a cgroup CPU
    quota rounded up (a container's CPU limit: v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota: float | None = None
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:
            limit_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            if limit_us > 0:
                quota = limit_us / int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            pass
    if quota is not None and quota > 0:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def default_pipelines(cores: int | None = None) -> int:
    """The default of ``RISKSTREAM_PIPELINES``: the cores this process may use (:func:`available_cores`),
    less the one the Faust process (single-threaded: consuming, batching, acking) keeps busy; at
    least 1, at most ``MAX_DEFAULT_PIPELINES``. On 2 cores, or in a container limited to 2 CPUs: 1."""
    if cores is None:
        cores = available_cores()
    return max(1, min(cores - 1, MAX_DEFAULT_PIPELINES))


_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*", re.IGNORECASE)


def host_port(addr: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) -> (host, port); ValueError naming what was expected."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def mask_url(url: str) -> str:
    """The URL with its password hidden: in the user info and in a ``?password=`` parameter
    (redis-py honours both)."""
    parts = urlsplit(url)
    query = _QUERY_PASSWORD.sub(r"\1\2***", parts.query)
    if parts.password is None:
        if query == parts.query:
            return url
        head, _, tail = url.partition("?")  # not urlunsplit: it would drop the // of unix:///path
        return f"{head}?{query}" + tail[len(parts.query):]
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, query, parts.fragment))


def load_settings(**overrides: Any) -> Settings:
    """Environment first, then non-None flag overrides; one clear ConfigError on bad values."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as e:
        err = e.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err["loc"])
        if not loc:  # a rule across settings: its message names them
            raise ConfigError(f"invalid settings: {msg}") from e
        raise ConfigError(f"invalid setting {loc} (RISKSTREAM_{loc.upper()}): {msg}") from e
