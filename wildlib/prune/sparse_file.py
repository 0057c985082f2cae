"""A sparse file of a pruned model (bitmask + nonzero values, ``.npz``, no pickle) whose size is
measured. Introduced in notebook 02, section 5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def save_sparse(model, path) -> Path:
    """Write the weights with every mostly-zero tensor stored as a bitmask + its nonzero
    values (fp32), everything else dense; a plain ``.npz`` (no pickle).  Returns the path."""
    from ..io import atomic_write

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


def load_sparse(path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_sparse`: a state dict of dense tensors.  Read without pickle; each
    tensor's shape is checked against its stored bitmask and values before anything that size
    is allocated, so a crafted file cannot ask for more memory than it holds."""
    out = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            for k in keys:
                if k.startswith("dense/"):
                    out[k[6:]] = torch.from_numpy(z[k].copy())
            for k in keys:
                if k.startswith("sparse/") and k.endswith("/shape"):
                    name = k[7:-6]
                    shape = tuple(int(d) for d in z[k])
                    packed, values = z[f"sparse/{name}/mask"], z[f"sparse/{name}/values"]
                    n = int(np.prod(shape)) if all(d >= 0 for d in shape) else -1
                    if not (packed.dtype == np.uint8 and packed.ndim == 1 and 8 * (packed.size - 1) < n <= 8 * packed.size):
                        raise SparseFileError(f"{path}: {name} claims shape {list(shape)} but its bitmask has "
                                              f"{packed.size} bytes")
                    mask = np.unpackbits(packed)[:n].astype(bool)
                    if values.dtype != np.float32 or values.shape != (int(mask.sum()),):
                        raise SparseFileError(f"{path}: {name} has {values.size} values for {int(mask.sum())} "
                                              "set bits")
                    dense = np.zeros(n, np.float32)
                    dense[mask] = values
                    out[name] = torch.from_numpy(dense.reshape(shape))
    except SparseFileError:
        raise
    except (ValueError, KeyError, OSError, EOFError) as e:  # numpy's refusal of pickles included
        raise SparseFileError(f"{path}: not a readable sparse weights file ({e})") from e
    return out
