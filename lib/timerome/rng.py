"""Stable integer seeds from JSON-able parts (the same on every machine, Python and run)."""
from __future__ import annotations

import hashlib
import json

__all__ = ["stable_seed"]


def stable_seed(*parts, digest_size: int = 8, bits: int | None = None) -> int:
    """``int.from_bytes(blake2b(json.dumps(list(parts), ensure_ascii=False)), "little")``, with a
    ``digest_size``-byte digest; ``bits`` keeps only the low ``bits`` bits (e.g. 63 for a
    non-negative int64, as `torch.Generator.manual_seed` wants)."""
    key = json.dumps(list(parts), ensure_ascii=False).encode()
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=digest_size).digest(), "little")
    return seed if bits is None else seed & ((1 << bits) - 1)
