"""The public names of the package faces, pinned: a change to them is a deliberate change of the
API that ``models/``, ``bench/``, the tests and other code import (httpx pins its own the same way)."""

from __future__ import annotations

import importlib
import inspect

import pytest

EXPORTED = {
    "stream.core.windows": [
        "APPLIED", "ApplyResults", "CATEGORY_CODE", "ColumnResult", "ColumnarStore", "DeferredWriteStore",
        "EventColumns", "Fence", "FenceColumn", "FencedColumnarStore", "FencedPart", "FencedResult", "Item", "MAX_FENCE_OFFSETS",
        "MemoryWindowStore", "PartResult", "PolicyRecord", "Snapshot", "Snapshots",
        "StateRows", "StateTable", "TOO_LATE", "TZ_ABSENT", "UserBatch", "UserResult", "WindowStore",
        "all_snapshots", "fence_mark", "fence_seen",
    ],
    "stream.core.features": [
        "CURFEW_FEATURE_HOURS", "FEATURE_INDEX", "FEATURE_NAMES", "FEATURE_SPEC", "FEATURE_SPEC_HASH",
        "FEATURE_VERSION", "MIN_TREND_DAYS", "NIGHT_HOURS", "N_FEATURES", "RuleArrays", "SMOOTH_MIN",
        "compute", "compute_arrays",
    ],
    "stream.core.policy": [
        "AlertPolicy", "Decision", "Evaluation", "ML_NONE", "MlPolicy", "POLICY_PREFIX", "PolicyConfig",
        "PolicyState", "PositiveMinutes", "Probability", "RuleInputs", "RuleProfile", "RulesConfig",
        "STATE_FIELDS", "Seconds", "in_window", "load_policy_config", "parse_curfew",
    ],
    "stream.core.scoring": [
        "ConstantScorer", "INPUT_NAME", "ModelInfo", "OnnxScorer", "PROBABILITY_OUTPUT",
        "REQUIRED_METADATA", "Scorer", "load_model_info", "load_scorer",
    ],
    "stream.state": [
        "Client", "DEFAULT_CACHE_USERS", "RedisWindowStore", "SCALARS_DTYPE", "STATE_LUA", "STATE_SUFFIX",
        "delete_keys", "pack_state", "redis_client", "unpack_state", "user_key", "user_tag",
    ],
    "stream.live.protocol": [
        "BufferState", "Call", "Drop", "MsgId", "POSITION_STRIDE", "RawMessage", "Report", "Step",
        "TopicPartition", "WireId", "WireMessage", "decode_position", "encode_position",
    ],
    "stream.errors": [
        "BrokerUnavailableError", "ConfigError", "ModelContractError", "PipelineDiedError",
        "RiskstreamError", "SecurityError", "StaleStateError", "StoreUnavailableError",
    ],
    "stream.settings": [
        "ALERTS_TOPIC", "DLQ_TOPIC", "LEVELS_TOPIC", "Settings", "host_port", "load_settings", "mask_url",
    ],
}


@pytest.mark.parametrize("face", sorted(EXPORTED))
def test_the_face_exports_exactly_its_pinned_names(face: str) -> None:
    module = importlib.import_module(face)
    assert sorted(module.__all__) == EXPORTED[face]
    for name in module.__all__:
        assert hasattr(module, name), f"{face}.__all__ names {name}, which it does not define"


@pytest.mark.parametrize("face", sorted(EXPORTED))
def test_exported_classes_and_functions_are_defined_inside_the_face(face: str) -> None:
    """A face re-exports its own submodules' names, never a third party's."""
    module = importlib.import_module(face)
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith(face), f"{face}.{name} comes from {obj.__module__}"


def test_every_module_of_the_package_declares_its_public_names() -> None:
    import pkgutil

    import stream

    missing = []
    for info in pkgutil.walk_packages(stream.__path__, "stream."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if not hasattr(module, "__all__") and not info.ispkg:
            missing.append(info.name)
    assert missing == []

