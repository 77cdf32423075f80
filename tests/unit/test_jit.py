"""The kernel cache guard: a cached kernel built against other constants is recompiled, once."""

from __future__ import annotations

from stream.core.jit import CacheGuard, constants_key


class Fake:
    def __init__(self, answer: int = 0) -> None:
        self.answer = answer
        self.recompiled = 0

    def __call__(self) -> int:
        return self.answer

    def recompile(self) -> None:
        self.recompiled += 1


def test_a_stale_probe_recompiles_every_kernel_once():
    key = constants_key("layout", 1)
    probe, a, b = Fake(answer=key + 1), Fake(), Fake()
    guard = CacheGuard(key, probe, (a, b))
    guard.ensure()
    guard.ensure()
    assert (probe.recompiled, a.recompiled, b.recompiled) == (1, 1, 1)


def test_a_current_probe_recompiles_nothing():
    key = constants_key("layout", 1)
    probe, a = Fake(answer=key), Fake()
    CacheGuard(key, probe, (a,)).ensure()
    assert (probe.recompiled, a.recompiled) == (0, 0)
    assert constants_key("layout", 2) != key
