"""The ``.wlc`` compressed model file: sparse positions, per-layer codebooks, b-bit codes,
entropy coding; a JSON header with shapes, dtypes and a SHA-256 checksum.  No pickle anywhere:
loading a file parses JSON and numbers, it never executes code.

Layout::

    b"WLC1"                      magic
    uint32 little-endian         length of the JSON header
    JSON header                  {"version", "sha256", "tensors": [...]}
    payload                      the streams, back to back

Each tensor in the header names its ``encoding`` and its streams (offset, length, ``coder``):

* ``shared`` (a weight-shared layer): ``gaps`` — the distance from one nonzero weight to the next
  in row-major order, one byte each (a gap over 255 is written as 255-steps of filler, Deep
  Compression's trick); ``codes`` — one byte per nonzero weight, the index into ``codebook``
  (at most 8 bits); ``codebook`` — float32 centroids.
* ``int8``: int8 values + one float32 scale.
* ``dense``: raw little-endian float32 (biases, frozen BatchNorm statistics, anything unshared).

Every stream is entropy-coded by whichever standard-library coder (``zlib``, ``bz2``, ``lzma``)
gives the fewest bytes for it, or stored raw if none helps; the choice is recorded per stream.
The checksum covers the payload; a truncated or corrupted file raises :class:`CodecError`.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write

MAGIC = b"WLC1"
VERSION = 1
CODERS = {
    "raw": (lambda b: b, lambda b: b),
    "zlib": (lambda b: zlib.compress(b, 9), zlib.decompress),
    "bz2": (lambda b: bz2.compress(b, 9), bz2.decompress),
    "lzma": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
}


class CodecError(ValueError):
    pass


def _best(data: bytes) -> tuple[str, bytes]:
    best = ("raw", data)
    for name, (enc, _) in CODERS.items():
        if name == "raw":
            continue
        out = enc(data)
        if len(out) < len(best[1]):
            best = (name, out)
    return best


def gaps_encode(mask: np.ndarray) -> np.ndarray:
    """Row-major positions of the True entries as uint8 gaps; 0 = 'advance 255, no weight'."""
    pos = np.flatnonzero(mask.ravel())
    gaps = np.diff(np.concatenate([[-1], pos]))  # >= 1
    fillers = (gaps - 1) // 255
    # each gap g -> fillers zeros (each advancing 255) then the remainder g - 255 * fillers (1..255)
    rem = gaps - 255 * fillers
    total = int(fillers.sum()) + gaps.size
    out = np.zeros(total, np.uint8)
    ends = np.cumsum(fillers + 1) - 1
    out[ends] = rem.astype(np.uint8)
    return out


def gaps_decode(gaps: np.ndarray, size: int) -> np.ndarray:
    g = gaps.astype(np.int64)
    step = np.where(g == 0, 255, g)
    pos = np.cumsum(step) - 1
    pos = pos[g != 0]
    if pos.size and pos[-1] >= size:
        raise CodecError(f"position {pos[-1]} outside a tensor of {size} entries")
    mask = np.zeros(size, bool)
    mask[pos] = True
    return mask


class _Writer:
    def __init__(self):
        self.chunks: list[bytes] = []
        self.offset = 0

    def stream(self, data: bytes, coder: str | None = None) -> dict:
        name, blob = _best(data) if coder is None else (coder, CODERS[coder][0](data))
        entry = {"offset": self.offset, "length": len(blob), "coder": name, "raw_length": len(data)}
        self.chunks.append(blob)
        self.offset += len(blob)
        return entry


def encode(state: dict[str, torch.Tensor], shared: dict | None = None, int8: dict | None = None) -> bytes:
    """Serialise a state dict.  Tensors named in ``shared`` ({param name: SharedLayer}) or
    ``int8`` ({param name: (int8 array, scale)}) use those encodings; the rest are dense."""
    shared, int8 = shared or {}, int8 or {}
    w = _Writer()
    tensors = []
    for name, t in state.items():
        arr = t.detach().cpu().numpy()
        info = {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        if name in shared:
            layer = shared[name]
            if layer.bits > 8:
                raise CodecError(f"{name}: {layer.bits}-bit codes do not fit the 8-bit code stream")
            info.update(encoding="shared", bits=layer.bits, nonzero=int(layer.codes.size),
                        gaps=w.stream(gaps_encode(layer.mask).tobytes()),
                        codes=w.stream(layer.codes.astype(np.uint8).tobytes()),
                        codebook=w.stream(layer.codebook.astype("<f4").tobytes(), "raw"))
        elif name in int8:
            q, scale = int8[name]
            info.update(encoding="int8", scale=float(scale), values=w.stream(q.astype(np.int8).tobytes()))
        else:
            if arr.dtype.kind not in "fiub":
                raise CodecError(f"{name}: cannot store dtype {arr.dtype}")
            info.update(encoding="dense", values=w.stream(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()))
        tensors.append(info)
    payload = b"".join(w.chunks)
    header = json.dumps({"version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
                         "tensors": tensors}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def _read(payload: bytes, entry: dict, where: str) -> bytes:
    end = entry["offset"] + entry["length"]
    if end > len(payload):
        raise CodecError(f"{where}: stream ends at byte {end}, beyond the payload ({len(payload)} bytes): file truncated")
    blob = payload[entry["offset"] : end]
    try:
        data = CODERS[entry["coder"]][1](blob)
    except KeyError:
        raise CodecError(f"{where}: unknown coder {entry['coder']!r}") from None
    except Exception as exc:  # zlib.error, lzma.LZMAError, OSError from bz2
        raise CodecError(f"{where}: cannot decode ({exc})") from None
    if len(data) != entry["raw_length"]:
        raise CodecError(f"{where}: decoded {len(data)} bytes, expected {entry['raw_length']}")
    return data


def decode(blob: bytes, source: str = "<bytes>") -> dict[str, torch.Tensor]:
    """Parse a ``.wlc`` file's bytes back into a state dict; verifies the checksum first."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise CodecError(f"{source}: not a wildlib compressed model (bad magic)")
    (hlen,) = struct.unpack("<I", blob[4:8])
    if 8 + hlen > len(blob):
        raise CodecError(f"{source}: header claims {hlen} bytes but the file has {len(blob) - 8}: file truncated")
    try:
        header = json.loads(blob[8 : 8 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"{source}: header is not valid JSON ({exc})") from None
    if header.get("version") != VERSION:
        raise CodecError(f"{source}: format version {header.get('version')} (this reader knows {VERSION})")
    payload = blob[8 + hlen :]
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CodecError(f"{source}: checksum mismatch: the file is truncated or corrupted")
    out = {}
    for t in header["tensors"]:
        name, shape = t["name"], tuple(t["shape"])
        size = int(np.prod(shape)) if shape else 1
        where = f"{source}: {name}"
        if t["encoding"] == "shared":
            mask = gaps_decode(np.frombuffer(_read(payload, t["gaps"], where), np.uint8), size)
            codes = np.frombuffer(_read(payload, t["codes"], where), np.uint8)
            book = np.frombuffer(_read(payload, t["codebook"], where), "<f4")
            if codes.size != mask.sum() or (codes.size and codes.max() >= book.size):
                raise CodecError(f"{where}: codes do not match positions or codebook")
            dense = np.zeros(size, np.float32)
            dense[mask] = book[codes]
            arr = dense.reshape(shape)
        elif t["encoding"] == "int8":
            q = np.frombuffer(_read(payload, t["values"], where), np.int8)
            arr = (q.astype(np.float32) * np.float32(t["scale"])).reshape(shape)
        elif t["encoding"] == "dense":
            arr = np.frombuffer(_read(payload, t["values"], where), np.dtype(t["dtype"]).newbyteorder("<"))
            arr = arr.astype(np.dtype(t["dtype"])).reshape(shape)
        else:
            raise CodecError(f"{where}: unknown encoding {t['encoding']!r}")
        out[name] = torch.from_numpy(np.array(arr))
    return out


def save(path, state, shared=None, int8=None) -> Path:
    blob = encode(state, shared, int8)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


def load(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    return decode(path.read_bytes(), str(path))


def param_key(layer_name: str) -> str:
    return f"{layer_name}.weight"


def stream_report(path) -> list[dict]:
    """Per tensor and stream: bytes stored and which coder won, from the file's header."""
    blob = Path(path).read_bytes()
    (hlen,) = struct.unpack("<I", blob[4:8])
    rows = []
    for t in json.loads(blob[8 : 8 + hlen])["tensors"]:
        for key in ("gaps", "codes", "codebook", "values"):
            if key in t:
                rows.append({"tensor": t["name"], "encoding": t["encoding"], "stream": key,
                             "bytes": t[key]["length"], "raw_bytes": t[key]["raw_length"], "coder": t[key]["coder"]})
    return rows
