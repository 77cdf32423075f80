"""Test suite of riskstream; a package so tests can share helpers (tests.model_factory)."""
