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


def load_sparse(path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_sparse`: a state dict of dense tensors."""
    out = {}
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        for k in keys:
            if k.startswith("dense/"):
                out[k[6:]] = torch.from_numpy(z[k].copy())
        for k in keys:
            if k.startswith("sparse/") and k.endswith("/shape"):
                name = k[7:-6]
                shape = tuple(z[k])
                n = int(np.prod(shape))
                mask = np.unpackbits(z[f"sparse/{name}/mask"])[:n].astype(bool)
                dense = np.zeros(n, np.float32)
                dense[mask] = z[f"sparse/{name}/values"]
                out[name] = torch.from_numpy(dense.reshape(shape))
    return out
