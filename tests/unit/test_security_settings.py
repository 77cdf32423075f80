"""Kafka/Redis security settings: validation, the one client-config builder, and masking."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from stream.errors import ConfigError
from stream.kafka_conf import (
    SecurityWatch,
    faust_credentials,
    is_security_error,
    librdkafka_config,
)
from stream.settings import load_settings
from stream.state import redis_client


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    p = tmp_path / "ca.pem"
    p.write_text("-----BEGIN CERTIFICATE-----\nnot parsed by these tests\n-----END CERTIFICATE-----\n")
    return p


def _sasl(ca: Path, **kw: object) -> dict[str, object]:
    return dict(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                kafka_sasl_username="svc", kafka_sasl_password="s3cret-pw-xyz", kafka_ssl_ca_location=str(ca), **kw)


def test_plaintext_default_config_has_no_security_keys() -> None:
    conf = librdkafka_config(load_settings(), acks="all")
    assert conf["security.protocol"] == "PLAINTEXT"
    assert conf["acks"] == "all"
    assert not [k for k in conf if k.startswith(("sasl.", "ssl."))]
    assert isinstance(conf["error_cb"], SecurityWatch) and conf["logger"] is conf["error_cb"]
    assert faust_credentials(load_settings()) is None


def test_sasl_ssl_config_uses_librdkafka_names_and_verifies_hostnames(ca: Path) -> None:
    s = load_settings(**_sasl(ca))
    conf = librdkafka_config(s)
    assert {k: conf[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password",
                                 "ssl.ca.location", "ssl.endpoint.identification.algorithm")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
        "sasl.password": "s3cret-pw-xyz", "ssl.ca.location": str(ca), "ssl.endpoint.identification.algorithm": "https"}


def test_faust_credentials_carry_the_same_settings(ca: Path, tmp_path: Path) -> None:
    import faust

    # a real CA file: the aiokafka TLS context loads it
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "1", "-subj", "/CN=t"], check=True, capture_output=True)
    creds = faust_credentials(load_settings(**{**_sasl(ca), "kafka_ssl_ca_location": str(crt)}))
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == (
        "svc", "s3cret-pw-xyz", "SCRAM-SHA-512", "SASL_SSL")
    assert creds.ssl_context.check_hostname and creds.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert "s3cret" not in repr(creds)


def test_masked_settings_show_no_password(ca: Path) -> None:
    s = load_settings(**_sasl(ca), redis_url="rediss://app:redis-pw-123@127.0.0.1:6380/0",
                      redis_ssl_ca_location=str(ca), state_key_secret="k" * 32)
    shown = repr(s.masked()) + repr(s) + str(s)
    for secret in ("s3cret-pw-xyz", "redis-pw-123", "k" * 32):
        assert secret not in shown
    assert s.masked()["kafka_sasl_password"] == "***"
    assert s.masked()["redis_url"] == "rediss://app:***@127.0.0.1:6380/0"


@pytest.mark.parametrize(("over", "words"), [
    ({"kafka_security_protocol": "SASL_SSL"}, "needs RISKSTREAM_KAFKA_SASL_USERNAME"),
    ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "RISKSTREAM_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ({"kafka_ssl_ca_location": "/nonexistent/ca.pem", "kafka_security_protocol": "SSL"}, "no such file"),
    ({"redis_ssl_ca_location": "CA"}, "not rediss://"),
    ({"kafka_ssl_ca_location": "pyproject.toml", "kafka_security_protocol": "SSL"}, "is not a PEM file with a certificate"),
])
def test_bad_security_settings_give_one_clear_line(over: dict[str, str], words: str, ca: Path) -> None:
    if over.get("redis_ssl_ca_location") == "CA":
        over = {"redis_ssl_ca_location": str(ca)}
    with pytest.raises(ConfigError) as e:
        load_settings(**over)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_client_certificate_needs_its_key(ca: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_certificate_location=str(ca))


def test_rediss_client_verifies_against_the_ca(ca: Path) -> None:
    client = redis_client(load_settings(redis_url="rediss://u:p@127.0.0.1:6380/0", redis_ssl_ca_location=str(ca)))
    kw = client.connection_pool.connection_kwargs
    assert (kw["ssl_ca_certs"], kw["ssl_cert_reqs"], kw["ssl_check_hostname"]) == (str(ca), "required", True)


def test_security_errors_are_told_apart_from_a_broker_that_is_down() -> None:
    assert is_security_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error"))
    assert is_security_error(KafkaError(KafkaError._SSL, "SSL handshake failed"))
    assert not is_security_error(KafkaError(KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9 failed: Connection refused"))
    assert not is_security_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert is_security_error(KafkaError(KafkaError._TRANSPORT, "Receive failed: error:0A000412:SSL routines::"
                                        "ssl/tls alert bad certificate: SSL alert number 42"))
    assert not is_security_error(KafkaError(KafkaError._TRANSPORT, "Receive failed: error:0A000126:SSL routines::"
                                            "unexpected eof while reading"))  # a broker that died
    w = SecurityWatch()
    for _ in range(3):
        w.log(6, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
              "127.0.0.1:9094/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN "
              "(after 1ms in state APIVERSION_QUERY)")
    assert w.failure is not None and "SECURITY_PROTOCOL" in w.failure
