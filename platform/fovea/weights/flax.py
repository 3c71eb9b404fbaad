"""Flax ``msgpack`` checkpoints (scenic's ``checkpoint`` files) read without JAX, for ``fovea.weights.read``.

flax.serialization writes a training state as a msgpack map whose arrays are extension objects holding a
``(shape, dtype name, C-order bytes)`` triple; arrays over 1 GiB are split into chunks. Only the parameter tree is
kept (``params``, or flax.optim's ``optimizer/target``), flattened to ``/``-joined names; the optimizer's moments,
step and random state are left out. Orbax checkpoint folders are not read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from fovea.weights.base import WeightsSource

# the first byte of a msgpack map (fixmap 0x80-0x8f, map16 0xde, map32 0xdf); torch files start with "PK" (zip) or
# 0x80 followed by a pickle protocol byte, so 0x80 alone is not taken
MSGPACK_MAP_BYTES = frozenset([*range(0x81, 0x90), 0xDE, 0xDF])


def is_flax_file(path: Path) -> bool:
    """Whether ``path`` starts like a msgpack map (a Flax checkpoint) rather than a torch or safetensors file."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1)
    except OSError:
        return False
    return len(head) == 1 and head[0] in MSGPACK_MAP_BYTES


_FLAX_EXT_NDARRAY, _FLAX_EXT_COMPLEX, _FLAX_EXT_SCALAR = 1, 2, 3  # flax.serialization's msgpack extension codes
_NUMBERED = re.compile(r"(.*)_(\d+)$")


def _flax_array(data: bytes) -> torch.Tensor:
    """One array as flax serialises it: a msgpack ``(shape, dtype name, C-order bytes)`` triple."""
    import msgpack
    import numpy as np

    shape, dtype, buffer = msgpack.unpackb(data, raw=True)
    name = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
    if name == "bfloat16":  # numpy has no bfloat16: read the bits as torch's
        flat = torch.frombuffer(bytearray(buffer), dtype=torch.bfloat16)
    else:
        flat = torch.from_numpy(np.frombuffer(buffer, dtype=np.dtype(name)).copy())
    return flat.reshape([int(v) for v in shape])


def _flax_ext(code: int, data: bytes) -> Any:
    import msgpack

    if code in (_FLAX_EXT_NDARRAY, _FLAX_EXT_SCALAR):
        return _flax_array(data)
    if code == _FLAX_EXT_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    return msgpack.ExtType(code, data)


def _flatten(tree: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(tree, dict) and "__msgpack_chunked_array__" in tree:  # flax splits arrays over 1 GiB in chunks
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        shape = [int(tree["shape"][str(i)]) for i in range(len(tree["shape"]))]
        out[prefix[:-1]] = torch.cat([chunk.reshape(-1) for chunk in chunks]).reshape(shape)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            _flatten(value, f"{prefix}{key}/", out)
    elif isinstance(tree, torch.Tensor):
        out[prefix[:-1]] = tree


def _linen_names(tree: Any) -> Any:
    """A pre-Linen parameter tree under Linen's names: submodules numbered per class, not all in one count."""
    if not isinstance(tree, dict):
        return tree

    def natural(name: str) -> tuple[str, int]:
        match = _NUMBERED.match(name)
        return (match[1], int(match[2])) if match else (name, -1)

    counts: dict[str, int] = {}
    renamed: dict[str, Any] = {}
    for name in sorted(tree, key=natural):
        match = _NUMBERED.match(name)
        new_name = name
        if match:
            new_name = f"{match[1]}_{counts.get(match[1], 0)}"
            counts[match[1]] = counts.get(match[1], 0) + 1
        renamed[new_name] = _linen_names(tree[name])
    return renamed


def read_flax_checkpoint(path: str | Path) -> WeightsSource:
    """A Flax ``msgpack`` checkpoint (scenic's ``checkpoint`` files) read without JAX: its parameters, flattened.

    The tensors are the training state's parameter tree (``params``, or flax.optim's ``optimizer/target``; the
    optimizer's moments, step and random state are left out) with ``/``-joined names. Orbax checkpoint folders are
    not read. ``safetensors.torch.save_file(read_flax_checkpoint(p).state, "vivit.safetensors")`` gives a file
    ``fovea.models.create_model(..., checkpoint=...)`` loads.

    Raises:
        ValueError: one line: not a msgpack file, or no parameter tree in it.
    """
    import msgpack

    path = Path(path).expanduser()
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_flax_ext, raw=False, strict_map_key=False)
    except (OSError, ValueError, msgpack.UnpackException) as err:
        raise ValueError(f"{path}: not a readable Flax msgpack checkpoint ({type(err).__name__})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: not a Flax checkpoint (a {type(tree).__name__}, not a tree of arrays)")
    where = ""
    if isinstance(tree.get("params"), dict):
        tree, where = tree["params"], "params"
    elif isinstance(tree.get("optimizer"), dict) and isinstance(tree["optimizer"].get("target"), dict):
        tree, where = tree["optimizer"]["target"], "optimizer/target"
        if isinstance(tree.get("params"), dict):
            tree, where = _linen_names(tree["params"]), "optimizer/target/params"
    state: dict[str, Any] = {}
    _flatten(tree, "", state)
    if not state:
        raise ValueError(f"{path}: a Flax checkpoint without parameters")
    return WeightsSource(path=path, state=state, meta={"format": "flax-msgpack", "nested_under": where})
