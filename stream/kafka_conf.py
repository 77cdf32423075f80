"""Every Kafka client's connection settings from one place: librdkafka (confluent-kafka) config
dicts and Faust/aiokafka credentials, built from the same Settings (docs/security.md).

A librdkafka client retries forever when it cannot connect, and reports an authentication or TLS
failure only through its ``error_cb`` and its log; :class:`SecurityWatch` (the ``error_cb`` and the
``logger`` of every config made here) remembers such a failure so that :func:`metadata` can give up at once with a
:class:`~stream.errors.SecurityError` instead of retrying what cannot succeed. A broker that is down
stays a retriable :class:`~stream.errors.BrokerUnavailableError`.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from stream.errors import BrokerUnavailableError, SecurityError
from stream.logconfig import kafka_logger
from stream.settings import Settings

__all__ = ["SecurityWatch", "faust_credentials", "librdkafka_config", "metadata", "ssl_context", "watch_of"]

log = logging.getLogger("riskstream.kafka")

# librdkafka's words for a TLS failure reported as a transport error: the wrong protocol for the
# listener, an untrusted broker certificate, or a TLS alert from the broker (e.g. "bad certificate":
# it requires a client certificate we lack or does not trust ours). Not "unexpected eof": a
# broker that dies mid-connection says that too.
_WRONG_PROTOCOL = ("security.protocol", "SSL handshake", "ssl.ca.location", "certificate verify failed",
                   "ssl/tls alert")
# A listener that accepts the TCP connection and closes it at the first request: a plaintext client
# at a TLS (or SASL) listener. A broker that is down refuses the connection instead. Counted, so a
# broker closing connections while it stops is not mistaken for it.
_CLOSED_AT_HELLO = ("connection closed by peer", "in state APIVERSION_QUERY")
_CLOSED_AT_HELLO_TIMES = 3


class SecurityWatch:
    """A librdkafka ``error_cb`` and ``logger``: keeps the first authentication/TLS failure; log
    lines go on to :func:`~stream.logconfig.kafka_logger`."""

    def __init__(self) -> None:
        self.failure: str | None = None
        self._closed_at_hello = 0
        self._log = kafka_logger()

    def __call__(self, err: KafkaError) -> None:  # error_cb
        if self.failure is None and is_security_error(err):
            self.failure = err.str()
        log.debug("kafka client error: %s", err.str())

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:  # logger
        text = msg % args if args else msg
        if self.failure is None and all(w in text for w in _CLOSED_AT_HELLO):
            self._closed_at_hello += 1
            if self._closed_at_hello >= _CLOSED_AT_HELLO_TIMES:
                self.failure = (f"the listener closes the connection at the first request ({text.rsplit(': ', 1)[-1]}): "
                                "is RISKSTREAM_KAFKA_SECURITY_PROTOCOL the listener's (e.g. SASL_SSL)?")
        elif self.failure is None and any(w in text for w in _WRONG_PROTOCOL):
            self.failure = text
        self._log.log(level, msg, *args, **kwargs)

    def check(self, where: str) -> None:
        if self.failure is not None:
            raise SecurityError(f"Kafka at {where} refused the connection: {self.failure}")


def is_security_error(err: KafkaError) -> bool:
    """An authentication or TLS failure (not worth retrying), as opposed to a broker that is down."""
    code = err.code()
    if code in (KafkaError._AUTHENTICATION, KafkaError._SSL,
                KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
        return True
    return code == KafkaError._TRANSPORT and any(w in err.str() for w in _WRONG_PROTOCOL)


def librdkafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """A confluent-kafka client config: bootstrap, security, logger and a :class:`SecurityWatch`
    as ``error_cb``; ``extra`` adds client-specific keys (dots spelled as underscores are not
    translated: pass them with ``**{"acks": "all"}``)."""
    s = settings
    watch = SecurityWatch()
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap,
        "security.protocol": s.kafka_security_protocol,
        "logger": watch,
        "error_cb": watch,
    }
    if s.kafka_security_protocol.startswith("SASL_"):
        assert s.kafka_sasl_password is not None  # Settings checked it
        conf["sasl.mechanism"] = s.kafka_sasl_mechanism
        conf["sasl.username"] = s.kafka_sasl_username
        conf["sasl.password"] = s.kafka_sasl_password.get_secret_value()
    if s.kafka_security_protocol.endswith("SSL"):
        conf["ssl.endpoint.identification.algorithm"] = s.kafka_ssl_endpoint_identification_algorithm
        if s.kafka_ssl_ca_location is not None:
            conf["ssl.ca.location"] = str(s.kafka_ssl_ca_location)
        if s.kafka_ssl_certificate_location is not None:
            conf["ssl.certificate.location"] = str(s.kafka_ssl_certificate_location)
            conf["ssl.key.location"] = str(s.kafka_ssl_key_location)
        if s.kafka_ssl_key_password is not None:
            conf["ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
    conf.update(extra)
    return conf


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of the aiokafka (Faust) clients: the same CA, client certificate and hostname
    check as :func:`librdkafka_config`."""
    s = settings
    ctx = ssl.create_default_context(
        cafile=str(s.kafka_ssl_ca_location) if s.kafka_ssl_ca_location is not None else None)
    if s.kafka_ssl_endpoint_identification_algorithm == "none":
        ctx.check_hostname = False
    if s.kafka_ssl_certificate_location is not None:
        ctx.load_cert_chain(str(s.kafka_ssl_certificate_location), str(s.kafka_ssl_key_location),
                            password=None if s.kafka_ssl_key_password is None
                            else s.kafka_ssl_key_password.get_secret_value())
    return ctx


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for these settings (None for PLAINTEXT)."""
    import faust

    s = settings
    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    if proto == "SSL":
        return faust.SSLCredentials(ssl_context(s))
    assert s.kafka_sasl_password is not None  # Settings checked it
    return faust.SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password.get_secret_value(),
                                 mechanism=s.kafka_sasl_mechanism,
                                 ssl_context=ssl_context(s) if proto == "SASL_SSL" else None)


def watch_of(conf: dict[str, Any]) -> SecurityWatch | None:
    """The :class:`SecurityWatch` of a config made by :func:`librdkafka_config`."""
    watch = conf.get("error_cb")
    return watch if isinstance(watch, SecurityWatch) else None


def metadata(client: Any, watch: SecurityWatch | None, settings: Settings, topic: str | None = None, *,
             timeout_s: float = 10.0) -> Any:
    """``client.list_topics`` that fails fast: a :class:`SecurityError` as soon as the client's
    :class:`SecurityWatch` saw an authentication/TLS failure, a :class:`BrokerUnavailableError`
    after ``timeout_s`` without an answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.list_topics(topic, timeout=min(0.5, max(0.05, deadline - time.monotonic())))
        except KafkaException as e:
            if hasattr(client, "poll"):
                client.poll(0)  # serve error_cb
            if watch is not None:
                watch.check(settings.kafka_bootstrap)
            if time.monotonic() >= deadline:
                raise BrokerUnavailableError(
                    f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout_s:.0f} s "
                    f"({e.args[0]}); is it running? (deploy/local/stack up)") from e
