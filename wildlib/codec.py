"""The ``.wlc`` compressed model file: sparse positions, per-layer codebooks, b-bit codes,
entropy coding; a JSON header with shapes, dtypes and a SHA-256 checksum.  No pickle anywhere:
loading a file parses JSON and numbers, it never executes code.

Layout (format version 2)::

    b"WLC2"                      magic
    uint32 little-endian         length of the compressed header
    zlib(JSON header)            {"version", "sha256", "streams": {...}, "tensors": [...]}
    payload                      the streams, back to back

The data of all tensors is gathered by kind into a few **streams**, so that each is entropy-coded
as one long sequence with one set of statistics (and one coder header):

* ``gaps`` — for every weight-shared tensor, the distance from one nonzero weight to the next in
  row-major order, one byte each (a gap over 255 is written as 255-steps of filler: Deep
  Compression's relative indices);
* ``codes`` — one byte per nonzero weight, its index into the layer's codebook (at most 8 bits);
* ``codebooks`` — the float32 centroids of every shared layer;
* ``int8`` and ``scales`` — int8 values and their float32 scales, one per tensor or one per
  output channel (``int8`` encoding);
* ``dense.<dtype>`` — everything else, raw little-endian (biases, BatchNorm parameters).

Each tensor in the header names its ``encoding`` and, per stream it uses, the ``[start, length]``
of its bytes in that stream once decoded.  Each stream records its offset and length in the
payload, its decoded length and the standard-library coder (``zlib``, ``bz2``, ``lzma``) that gave
the fewest bytes for it (or ``raw``).  The checksum covers the payload; a truncated or corrupted
file raises :class:`CodecError`.
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

MAGIC = b"WLC2"
VERSION = 2
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


class _Streams:
    """Collects bytes per named stream; each tensor gets a [start, length] slice of one."""

    def __init__(self):
        self.parts: dict[str, list[bytes]] = {}
        self.sizes: dict[str, int] = {}

    def add(self, stream: str, data: bytes) -> list[int]:
        start = self.sizes.get(stream, 0)
        self.parts.setdefault(stream, []).append(data)
        self.sizes[stream] = start + len(data)
        return [start, len(data)]

    def pack(self) -> tuple[dict, bytes]:
        table, chunks, offset = {}, [], 0
        for name, parts in self.parts.items():
            raw = b"".join(parts)
            coder, blob = _best(raw)
            table[name] = {"offset": offset, "length": len(blob), "coder": coder, "raw_length": len(raw)}
            chunks.append(blob)
            offset += len(blob)
        return table, b"".join(chunks)


def _le(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


def encode(state: dict[str, torch.Tensor], shared: dict | None = None, int8: dict | None = None) -> bytes:
    """Serialise a state dict.  Tensors named in ``shared`` ({param name: SharedLayer}) or
    ``int8`` ({param name: (int8 array, scale)}, the scale a float or one per output channel)
    use those encodings; the rest are stored dense."""
    shared, int8 = shared or {}, int8 or {}
    st = _Streams()
    tensors = []
    for name, t in state.items():
        arr = t.detach().cpu().numpy()
        info = {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        if name in shared:
            layer = shared[name]
            if layer.bits > 8:
                raise CodecError(f"{name}: {layer.bits}-bit codes do not fit the 8-bit code stream")
            info.update(encoding="shared", bits=layer.bits, nonzero=int(layer.codes.size),
                        gaps=st.add("gaps", gaps_encode(layer.mask).tobytes()),
                        codes=st.add("codes", layer.codes.astype(np.uint8).tobytes()),
                        codebook=st.add("codebooks", _le(layer.codebook.astype(np.float32))))
        elif name in int8:
            q, scale = int8[name]
            scale = np.atleast_1d(np.asarray(scale, np.float32))
            if scale.size not in (1, arr.shape[0] if arr.ndim else 1):
                raise CodecError(f"{name}: {scale.size} scales for {arr.shape[0]} output channels")
            info.update(encoding="int8", values=st.add("int8", q.astype(np.int8).tobytes()),
                        scales=st.add("scales", _le(scale)))
        else:
            if arr.dtype.kind not in "fiub":
                raise CodecError(f"{name}: cannot store dtype {arr.dtype}")
            info.update(encoding="dense", values=st.add(f"dense.{arr.dtype}", _le(arr)))
        tensors.append(info)
    streams, payload = st.pack()
    header = zlib.compress(json.dumps({"version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
                                       "streams": streams, "tensors": tensors}, separators=(",", ":")).encode(), 9)
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def _stream_of(t: dict, key: str) -> str:
    """The stream that holds the ``key`` slice of header entry ``t``."""
    if key == "values":
        return "int8" if t["encoding"] == "int8" else f"dense.{np.dtype(t['dtype'])}"
    return "codebooks" if key == "codebook" else key


def _stream(payload: bytes, name: str, entry: dict, where: str) -> bytes:
    end = entry["offset"] + entry["length"]
    if end > len(payload):
        raise CodecError(f"{where}: stream {name!r} ends at byte {end}, beyond the payload ({len(payload)} bytes): "
                         "file truncated")
    blob = payload[entry["offset"] : end]
    try:
        data = CODERS[entry["coder"]][1](blob)
    except KeyError:
        raise CodecError(f"{where}: stream {name!r}: unknown coder {entry['coder']!r}") from None
    except Exception as exc:  # zlib.error, lzma.LZMAError, OSError from bz2
        raise CodecError(f"{where}: stream {name!r}: cannot decode ({exc})") from None
    if len(data) != entry["raw_length"]:
        raise CodecError(f"{where}: stream {name!r}: decoded {len(data)} bytes, expected {entry['raw_length']}")
    return data


def read_header(blob: bytes, source: str = "<bytes>") -> tuple[dict, bytes]:
    """(header, payload) of a ``.wlc`` file's bytes; checks magic, version and sizes."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        hint = " (an older .wlc format: re-run stage 03 to rewrite it)" if blob[:3] == MAGIC[:3] else ""
        raise CodecError(f"{source}: not a wildlib compressed model (bad magic){hint}")
    (hlen,) = struct.unpack("<I", blob[4:8])
    if 8 + hlen > len(blob):
        raise CodecError(f"{source}: header claims {hlen} bytes but the file has {len(blob) - 8}: file truncated")
    try:
        header = json.loads(zlib.decompress(blob[8 : 8 + hlen]))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"{source}: header cannot be read ({exc}): file corrupted") from None
    if header.get("version") != VERSION:
        raise CodecError(f"{source}: format version {header.get('version')} (this reader knows {VERSION})")
    return header, blob[8 + hlen :]


def decode(blob: bytes, source: str = "<bytes>") -> dict[str, torch.Tensor]:
    """Parse a ``.wlc`` file's bytes back into a state dict; verifies the checksum first."""
    header, payload = read_header(blob, source)
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CodecError(f"{source}: checksum mismatch: the file is truncated or corrupted")
    streams = {n: _stream(payload, n, e, source) for n, e in header["streams"].items()}

    def part(t, key):
        start, length = t[key]
        stream = _stream_of(t, key)
        data = streams.get(stream, b"")
        if start + length > len(data):
            raise CodecError(f"{source}: {t['name']}: slice {key} outside stream {stream!r}")
        return data[start : start + length]

    out = {}
    for t in header["tensors"]:
        name, shape = t["name"], tuple(t["shape"])
        size = int(np.prod(shape)) if shape else 1
        where = f"{source}: {name}"
        if t["encoding"] == "shared":
            mask = gaps_decode(np.frombuffer(part(t, "gaps"), np.uint8), size)
            codes = np.frombuffer(part(t, "codes"), np.uint8)
            book = np.frombuffer(part(t, "codebook"), "<f4")
            if codes.size != mask.sum() or (codes.size and codes.max() >= book.size):
                raise CodecError(f"{where}: codes do not match positions or codebook")
            dense = np.zeros(size, np.float32)
            dense[mask] = book[codes]
            arr = dense.reshape(shape)
        elif t["encoding"] == "int8":
            q = np.frombuffer(part(t, "values"), np.int8).reshape(shape)
            scale = np.frombuffer(part(t, "scales"), "<f4").astype(np.float32)
            if q.size != size or scale.size not in (1, shape[0] if shape else 1):
                raise CodecError(f"{where}: int8 values or scales do not match the shape {shape}")
            arr = q.astype(np.float32) * scale.reshape((-1,) + (1,) * (len(shape) - 1) if scale.size > 1 else ())
        elif t["encoding"] == "dense":
            dtype = np.dtype(t["dtype"])
            arr = np.frombuffer(part(t, "values"), dtype.newbyteorder("<"))
            if arr.size != size:
                raise CodecError(f"{where}: {arr.size} values for the shape {shape}")
            arr = arr.astype(dtype).reshape(shape)
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
    """Per stream: bytes stored, bytes once decoded, the coder that won, and how many tensors
    use it; read from the file's header."""
    header, _ = read_header(Path(path).read_bytes(), str(path))
    users: dict[str, int] = {}
    for t in header["tensors"]:
        for key in ("gaps", "codes", "codebook", "scales", "values"):
            if key in t:
                users[_stream_of(t, key)] = users.get(_stream_of(t, key), 0) + 1
    return [{"stream": n, "bytes": e["length"], "raw_bytes": e["raw_length"], "coder": e["coder"],
             "tensors": users.get(n, 0)} for n, e in header["streams"].items()]
