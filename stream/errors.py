"""The exception tree of riskstream: one root, a few narrow leaves."""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ConfigError",
    "ModelContractError",
    "PipelineDiedError",
    "RiskstreamError",
    "SecurityError",
    "StaleStateError",
    "StoreUnavailableError",
]


class RiskstreamError(Exception):
    """Root of every error riskstream raises on purpose."""


class ConfigError(RiskstreamError, ValueError):
    """A setting, flag or settings file is invalid; the message says which and why."""


class StoreUnavailableError(RiskstreamError):
    """Redis (or another store) cannot be reached; retriable with backoff."""


class BrokerUnavailableError(RiskstreamError):
    """Kafka cannot be reached; retriable with backoff."""


class SecurityError(RiskstreamError):
    """Kafka or Redis refused our credentials, or TLS could not be established (untrusted
    certificate, wrong protocol): not retriable, the configuration must change."""


class ModelContractError(RiskstreamError):
    """The ONNX model does not match the running feature spec or the I/O contract."""


class StaleStateError(RiskstreamError):
    """Another worker replaced state this one had loaded: it no longer owns that partition."""


class PipelineDiedError(RiskstreamError):
    """A worker's pipeline process exited (crashed, killed): the worker cannot go on."""
