"""Model weights on the wire: torch state_dict <-> Flower ArrayRecord, transport dtype, model hash.

One of the few modules that import ``flwr`` (its API moves fast). Arrays cross the network as numpy
arrays keyed by the state_dict names. Floating arrays travel as ``transport_dtype`` ("float32" default,
"float16" halves the bytes); integer buffers (``num_batches_tracked``) keep their dtype. A received
record is loaded back with the model's own dtypes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from shared.errors import ModelMismatchError

TRANSPORT_DTYPES: tuple[str, ...] = ("float32", "float16")


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """state_dict -> ordered {name: contiguous numpy array} (CPU copies, original dtypes)."""
    return {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in state.items()}


def numpy_to_record(arrays: Mapping[str, np.ndarray], transport_dtype: str = "float32") -> ArrayRecord:
    """{name: ndarray} -> ArrayRecord; floating arrays cast to ``transport_dtype``."""
    if transport_dtype not in TRANSPORT_DTYPES:
        raise ModelMismatchError(
            f"transport dtype {transport_dtype!r} is not supported: expected one of {', '.join(TRANSPORT_DTYPES)}"
        )
    out: dict[str, Array] = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(transport_dtype, copy=False)
        out[name] = Array(np.ascontiguousarray(arr))
    return ArrayRecord(out)


def state_to_record(state: Mapping[str, torch.Tensor], transport_dtype: str = "float32") -> ArrayRecord:
    """torch state_dict -> ArrayRecord keyed by parameter/buffer name."""
    return numpy_to_record(state_to_numpy(state), transport_dtype)


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> {name: ndarray} in record order."""
    return {k: record[k].numpy() for k in record.keys()}


def record_to_state(
    record: ArrayRecord, reference: Mapping[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """ArrayRecord -> state_dict with the dtypes of ``reference`` (the local model's state_dict).

    Raises ModelMismatchError naming the first missing/unexpected key or shape mismatch, or a non-finite array.
    """
    arrays = record_to_numpy(record)
    missing = [k for k in reference if k not in arrays]
    extra = [k for k in arrays if k not in reference]
    if missing or extra:
        raise ModelMismatchError(
            f"received weights do not match the model: {len(missing)} missing keys (first: {missing[:1]}), "
            f"{len(extra)} unexpected keys (first: {extra[:1]}); check that server and site run the same "
            "model settings"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, ref in reference.items():
        arr = arrays[name]
        if ref.dim() == 0 and arr.size == 1:
            arr = arr.reshape(())  # Flower's Array stores 0-d buffers (num_batches_tracked) as shape (1,)
        if tuple(arr.shape) != tuple(ref.shape):
            raise ModelMismatchError(
                f"received array {name!r} has shape {tuple(arr.shape)}, the model expects {tuple(ref.shape)}"
            )
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ModelMismatchError(f"received array {name!r} contains NaN or infinite values")
        out[name] = torch.from_numpy(np.array(arr, copy=True)).to(ref.dtype)
    return out


def model_hash(arrays: Mapping[str, np.ndarray] | ArrayRecord) -> str:
    """SHA-256 over sorted (name, dtype, shape, bytes): identical arrays <-> identical hash."""
    if isinstance(arrays, ArrayRecord):
        arrays = record_to_numpy(arrays)
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(tuple(arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def record_bytes(record: ArrayRecord) -> int:
    """Payload bytes of the arrays in ``record``."""
    return int(record.count_bytes())


def float32_bytes(arrays: Iterable[np.ndarray]) -> int:
    """Bytes the arrays would take in float32 (the reference size for transport figures)."""
    return int(sum(np.asarray(a).size * 4 for a in arrays))


def norm_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the model's normalisation layers (BatchNorm/GroupNorm/LayerNorm/InstanceNorm)."""
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    keys: list[str] = []
    for mod_name, module in model.named_modules():
        if isinstance(module, norm_types):
            prefix = f"{mod_name}." if mod_name else ""
            keys.extend(prefix + k for k in module.state_dict().keys())
    return keys


#: the state-dict names of BatchNorm's running statistics (buffers, not weights; the coordinator has no model)
RUNNING_STATISTICS: tuple[str, ...] = ("running_mean", "running_var", "num_batches_tracked")


def is_running_statistic(key: str) -> bool:
    """Whether state-dict ``key`` is a normalisation layer's running statistic rather than a trained weight."""
    return key.rsplit(".", 1)[-1] in RUNNING_STATISTICS
