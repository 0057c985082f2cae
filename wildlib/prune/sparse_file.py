"""A sparse file of a pruned model (bitmask + nonzero values, ``.npz``, no pickle) whose size is
measured. Introduced in notebook 02, section 5."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from ..io import atomic_write


def save_sparse(model, path) -> Path:
    """Write the weights with every mostly-zero tensor stored as a bitmask + its nonzero
    values (fp32), everything else dense; a plain ``.npz`` (no pickle).  Returns the path.
    Introduced in notebook 02_prune_magnitude, section "5 · Honest sizes"."""
    arrays = {}
    for k, v in model.state_dict().items():
        a = v.detach().cpu().numpy()
        nz = np.count_nonzero(a)
        if a.dtype == np.float32 and a.size >= 64 and nz < a.size * 0.97:  # bitmask pays off
            mask = a != 0
            arrays[f"sparse/{k}/mask"] = np.packbits(mask.ravel())
            arrays[f"sparse/{k}/values"] = a[mask]
            arrays[f"sparse/{k}/shape"] = np.array(a.shape, np.int64)
        else:
            arrays[f"dense/{k}"] = a

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


class SparseFileError(ValueError):
    """A sparse file that is not what :func:`save_sparse` writes (the message names the file)."""


def _check_members(path) -> None:
    """Before numpy reads anything: every member of the ``.npz`` stored uncompressed (as
    :func:`save_sparse` writes them: no zip bomb), and its ``.npy`` header asking for no more
    bytes than the member holds and for no Python objects."""
    import zipfile

    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise SparseFileError(f"{path}: {info.filename} is compressed (save_sparse stores members as they are)")
            if info.flag_bits & 0x21:  # bit 0 encrypted, bit 5 patched data: save_sparse writes neither
                raise SparseFileError(f"{path}: {info.filename} is encrypted or patched (flag bits {info.flag_bits:#x})")
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version not in readers:
                    raise SparseFileError(f"{path}: {info.filename} has .npy format version {version}")
                shape, _, dtype = readers[version](fh)
            if dtype.hasobject:
                raise SparseFileError(f"{path}: {info.filename} holds Python objects (allow_pickle is off)")
            if math.prod(shape) * dtype.itemsize > info.file_size:
                raise SparseFileError(f"{path}: {info.filename} claims shape {list(shape)} of {dtype}, more than "
                                      f"its {info.file_size} bytes")


def load_sparse(path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_sparse`: a state dict of dense tensors.  Read without pickle; every
    size is checked before it is allocated (each member's header against the member's bytes, each
    tensor's shape against its stored bitmask and values), so a crafted file cannot ask for more
    memory than its own size (plus the dense tensors that size describes).
    Introduced in notebook 02_prune_magnitude, section "5 · Honest sizes"."""
    import zipfile
    import zlib

    out = {}
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            for k in keys:
                if k.startswith("dense/"):
                    out[k[6:]] = torch.from_numpy(z[k].copy())
            for k in keys:
                if k.startswith("sparse/") and k.endswith("/shape"):
                    name, dims = k[7:-6], z[k]
                    if dims.ndim != 1 or dims.dtype.kind not in "iu" or (dims < 0).any():
                        raise SparseFileError(f"{path}: {name} has no valid shape ({dims.tolist()})")
                    shape = tuple(int(d) for d in dims)
                    packed, values = z[f"sparse/{name}/mask"], z[f"sparse/{name}/values"]
                    n = math.prod(shape)
                    if not (packed.dtype == np.uint8 and packed.ndim == 1 and 8 * (packed.size - 1) < n <= 8 * packed.size):
                        raise SparseFileError(f"{path}: {name} claims shape {list(shape)} but its bitmask has "
                                              f"{packed.size} bytes")
                    mask = np.unpackbits(packed)[:n].astype(bool)
                    if values.dtype != np.float32 or values.shape != (int(mask.sum()),):
                        raise SparseFileError(f"{path}: {name} has {values.size} {values.dtype} values for "
                                              f"{int(mask.sum())} set bits (float32 expected)")
                    dense = np.zeros(n, np.float32)
                    dense[mask] = values
                    out[name] = torch.from_numpy(dense.reshape(shape))
    except SparseFileError:
        raise
    except (ValueError, KeyError, OSError, EOFError, TypeError, zipfile.BadZipFile, zlib.error,
            NotImplementedError, RuntimeError) as e:  # zipfile raises the last two for features it lacks
        raise SparseFileError(f"{path}: not a readable sparse weights file ({e})") from e
    return out
