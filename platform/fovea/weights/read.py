"""Read any weights file fovea accepts into a ``WeightsSource``, never unpickling arbitrary objects.

Accepted: ``.safetensors``; ``.npz`` (Google's JAX ViT releases); Flax msgpack checkpoints (scenic's, read without
JAX: ``weights.flax``); torch files (``.pth``, ``.pt``, ``.pyth``, ``.bin``, ``.ckpt``) read with
``torch.load(weights_only=True)``, holding a state dict directly or nested under ``model_state`` (PySlowFast, the
TimeSformer repo, pytorchvideo), ``model``, ``state_dict`` or ``model_ema``; a transformers model folder
(``config.json`` beside ``model.safetensors`` or ``pytorch_model.bin``, sharded ones too); a fovea model folder
(``weights.pt`` and ``fovea_model.json``: what ``fovea models download`` and the registry hold). A file with a
``.sha256`` checksum beside it (fovea's checkpoints and weights) is checked against it first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fovea.errors import typed_line
from fovea.weights.base import State, WeightsSource

# where a checkpoint file nests its state dict, in the order the keys are tried
NESTING_KEYS = ("model_state", "model", "state_dict", "model_ema", "module")
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# a fovea model folder (``fovea.model_folder``): its weights and what rebuilds the model, in fovea's own layout
_FOVEA_WEIGHTS, _FOVEA_INFO = "weights.pt", "fovea_model.json"


def _error(message: str) -> Exception:
    from fovea.checkpoints import CheckpointError

    return CheckpointError(message)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _error(f"{path}: unreadable JSON ({typed_line(err)})") from None
    return value if isinstance(value, dict) else None


def _read_tensor_file(path: Path) -> tuple[Any, dict[str, Any]]:
    from fovea.checkpoints import load_verified, verify

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        verify(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
                header = dict(handle.metadata() or {})
        except Exception as err:  # noqa: BLE001 - SafetensorError (a cut or lying header), OSError, ...
            raise _error(f"{path}: unreadable safetensors file ({typed_line(err)})") from None
        return state, {"format": "safetensors", "safetensors_metadata": header}
    if path.suffix == ".npz":  # Google's JAX ViT releases: plain arrays, never pickles
        import numpy as np

        verify(path)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {key: torch.from_numpy(arrays[key].copy()) for key in arrays.files}, {"format": "npz"}
        except Exception as err:  # noqa: BLE001 - a cut zip, pickled arrays (refused), not an .npz
            raise _error(f"{path}: unreadable .npz file ({typed_line(err)})") from None
    from fovea.weights.flax import is_flax_file, read_flax_checkpoint

    if is_flax_file(path):  # scenic's checkpoints: Flax msgpack, read without JAX
        verify(path)
        try:
            source = read_flax_checkpoint(path)
        except ValueError as err:
            raise _error(str(err)) from None
        return source.state, dict(source.meta)
    return load_verified(path, what="weights file"), {"format": "torch"}


def _folder_files(folder: Path) -> list[Path]:
    for name in _INDEX_FILES:
        index = _read_json(folder / name)
        if index is not None:
            shards = sorted(set((index.get("weight_map") or {}).values()))
            if not shards:
                raise _error(f"{folder / name}: lists no weight files")
            return [folder / shard for shard in shards]
    for name in _FOLDER_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise _error(f"{folder}: a folder without model.safetensors or pytorch_model.bin (not a transformers model folder)")


def _unnest(raw: Any, path: Path, meta: dict[str, Any]) -> State:
    state = raw
    if isinstance(raw, dict):
        if isinstance(raw.get("cfg"), str):
            meta["cfg"] = raw["cfg"]  # PySlowFast and the TimeSformer repo store their YAML config beside the weights
        for key in NESTING_KEYS:
            if isinstance(raw.get(key), dict) and raw[key]:
                state, meta["nested_under"] = raw[key], key
                break
    if not isinstance(state, dict) or not state:
        raise _error(f"{path}: holds no state dict")
    cleaned: State = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise _error(f"{path}: not a state dict of tensors ({key!r} holds a {type(value).__name__})")
        key = str(key)
        for prefix in _STRIPPED_PREFIXES:
            key = key.removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def read_weights(path: str | Path) -> WeightsSource:
    """The tensors of a weights file or transformers folder, and what it says about itself (``WeightsSource.meta``).

    Raises:
        CheckpointError: (a ``ValueError``) one line: missing, unreadable, truncated or corrupt, needing arbitrary
            unpickling, or holding no state dict of tensors.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise _error(f"{path}: no such file")
    meta: dict[str, Any] = {}
    folder = path if path.is_dir() else path.parent
    fovea_info = _read_json(folder / _FOVEA_INFO) if (folder / _FOVEA_WEIGHTS).is_file() else None
    if fovea_info is not None and (path.is_dir() or path.name == _FOVEA_WEIGHTS):
        meta["fovea_model"] = fovea_info  # model name, create arguments, classes, normalisation, clip
        path = folder / _FOVEA_WEIGHTS
    if path.is_dir():
        files = _folder_files(path)
        meta["format"] = "transformers-folder"
        raw: dict[str, Any] = {}
        for file in files:
            part, _ = _read_tensor_file(file)
            raw.update(part)
    else:
        raw, file_meta = _read_tensor_file(path)
        meta.update(file_meta)
    config = None if fovea_info is not None else _read_json(folder / "config.json")
    if config is not None and (path.is_dir() or path.name in _FOLDER_FILES or path.suffix in (".safetensors", ".bin")):
        meta["config"] = config
        preprocessor = _read_json(folder / "preprocessor_config.json")
        if preprocessor is not None:
            meta["preprocessor"] = preprocessor
    return WeightsSource(path=path, state=_unnest(raw, path, meta), meta=meta)


def read_state_dict(path: str | Path) -> State:
    """Only the tensors of ``read_weights`` (in the file's own key layout)."""
    return read_weights(path).state
