"""Parameter encoders for the memoizers, as in torch 2.13's ``caching.encoders``.

A ``custom_params_encoder`` turns a call's arguments into the plain data its key is
made of; for tensors that is their metadata, never their values.
"""

from __future__ import annotations

import importlib
from typing import Any


def encode_tensor(tensor: Any) -> dict[str, object]:
    """A tensor's shape, stride and dtype: what a kernel choice depends on, not its data."""
    return {
        "shape": tuple(int(d) for d in tensor.shape),
        "stride": tuple(int(s) for s in tensor.stride()),
        "dtype": str(tensor.dtype),
    }


def should_pad_params_encoder(
    match: Any, mat1: Any, mat2: Any, op: Any, input: Any = None
) -> dict[str, object]:
    """torch's encoder for ``pad_mm._should_pad`` (needs torch), as a plain dict key."""
    torch_encoders = importlib.import_module("torch._inductor.runtime.caching.encoders")
    return dict(torch_encoders.should_pad_params_encoder(match, mat1, mat2, op, input))
