"""numba's on-disk kernel cache, kept honest about the constants the kernels bake in.

numba compiles module globals (the layout constants of ``layout.py``) into a kernel as constants,
and invalidates a cached kernel only when the kernel's own source file changes. A kernel module
therefore names a digest of the constants it uses (:func:`constants_key`), compiles a tiny probe
that returns that digest, and guards its kernels with :class:`CacheGuard`: the first use in a
process compares the cached probe's answer with the current digest and recompiles the module's
kernels when ``layout.py`` changed since they were cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CacheGuard", "constants_key"]


def constants_key(*constants: Any) -> int:
    """A stable 60-bit digest of JSON-serialisable constants."""
    return int(hashlib.sha256(json.dumps(list(constants)).encode()).hexdigest()[:15], 16)


class CacheGuard:
    def __init__(self, key: int, probe: Callable[[], int], kernels: Sequence[Any]) -> None:
        """``probe``: a cached njit function returning ``key``; ``kernels``: the module's njit
        functions, callees before callers (a caller links its callees' code when it compiles)."""
        self.key = key
        self.probe = probe
        self.kernels = kernels
        self._checked = False

    def ensure(self) -> None:
        if not self._checked:
            if self.probe() != self.key:
                for fn in (self.probe, *self.kernels):
                    fn.recompile()
            self._checked = True
