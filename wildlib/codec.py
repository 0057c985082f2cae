"""The ``.wlc`` compressed model file: sparse positions, per-layer codebooks, b-bit codes,
entropy coding; a JSON header with shapes, dtypes and a SHA-256 checksum.  No pickle anywhere:
loading a file parses JSON and numbers, it never executes code.

Layout (format version 3)::

    b"WLC3"                      magic
    uint32 little-endian         length of the compressed header
    zlib(JSON header)            {"version", "streams": {...}, "tensors": [...]}
    payload                      the streams, back to back
    32 bytes                     SHA-256 of everything before it (magic, header and payload)

Version 2 files (``WLC2``: a ``sha256`` of the payload alone inside the header) are still read.

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
the fewest bytes for it (or ``raw``).  The checksum covers the header and the payload.

Reading an untrusted file is bounded: the checksum is verified first; the header is checked
against a schema (types, non-negative integers, real numeric dtypes, unique names, every slice
inside its stream, sizes that agree with the shapes) **before anything is allocated**; the
number of elements is capped, relative to the file's size and absolutely; every stream is
decompressed with an output limit, and only streams that some tensor uses are decoded.  Every
failure is a :class:`CodecError` that names the file and the problem.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write

MAGIC = b"WLC3"
VERSION = 3
READABLE = {b"WLC2": 2, b"WLC3": 3}  # magic -> version this reader accepts
DIGEST = 32  # bytes of the trailing SHA-256 (version 3)
# Caps on what a file may make the reader allocate: elements in all tensors together, relative
# to the file's size (a 99%-sparse, 2-bit model stays far below it) and absolutely (1 GiB of fp32).
MAX_ELEMENTS_PER_BYTE = 1000
MAX_ELEMENTS = 1 << 28
MAX_HEADER_BYTES = 16 << 20  # decompressed JSON
MAX_TENSORS = 100_000
DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
ENCODINGS = {"shared": ("gaps", "codes", "codebook"), "int8": ("values", "scales"), "dense": ("values",)}
CODERS = {
    "raw": (lambda b: b, None),
    "zlib": (lambda b: zlib.compress(b, 9), zlib.decompressobj),
    "bz2": (lambda b: bz2.compress(b, 9), bz2.BZ2Decompressor),
    "lzma": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.LZMADecompressor),
}


class CodecError(ValueError):
    pass


def _decompress(coder: str, blob: bytes, limit: int) -> bytes:
    """Decompress ``blob`` producing at most ``limit`` bytes; raises if there would be more."""
    if coder == "raw":
        return blob
    d = CODERS[coder][1]()  # all three decompressors take a max_length and report eof
    out = d.decompress(blob, limit + 1)
    if len(out) > limit:
        raise ValueError(f"decodes to more than the {limit} bytes its header declares")
    if not d.eof:
        raise ValueError("compressed data ends early")
    if d.unused_data:
        raise ValueError("trailing bytes after the compressed data")
    return out


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


def gaps_decode(gaps: np.ndarray, size: int, where: str = "gaps") -> np.ndarray:
    g = gaps.astype(np.int64)
    step = np.where(g == 0, 255, g)
    pos = np.cumsum(step) - 1
    pos = pos[g != 0]
    if pos.size and pos[-1] >= size:
        raise CodecError(f"{where}: position {pos[-1]} outside a tensor of {size} entries")
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
    header = zlib.compress(json.dumps({"version": VERSION, "streams": streams, "tensors": tensors},
                                      separators=(",", ":")).encode(), 9)
    body = MAGIC + struct.pack("<I", len(header)) + header + payload
    return body + hashlib.sha256(body).digest()


def _stream_of(t: dict, key: str) -> str:
    """The stream that holds the ``key`` slice of header entry ``t``."""
    if key == "values":
        return "int8" if t["encoding"] == "int8" else f"dense.{np.dtype(t['dtype'])}"
    return "codebooks" if key == "codebook" else key


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_header(blob: bytes, source: str = "<bytes>") -> tuple[dict, bytes]:
    """(header, payload) of a ``.wlc`` file's bytes: magic, checksum, then the header's schema
    (:func:`check_header`), all before any tensor is allocated."""
    version = READABLE.get(blob[:4])
    if len(blob) < 8 or version is None:
        hint = ""
        if blob[:3] == b"WLC" and blob[3:4].isdigit():
            hint = (f" (format version {blob[3:4].decode()}: this reader knows "
                    f"{', '.join(str(v) for v in READABLE.values())}; re-run stage 03 to rewrite it)")
        raise CodecError(f"{source}: not a wildlib compressed model (bad magic){hint}")
    (hlen,) = struct.unpack("<I", blob[4:8])
    end = len(blob) - (DIGEST if version >= 3 else 0)
    if 8 + hlen > end:
        raise CodecError(f"{source}: header claims {hlen} bytes but the file has {max(0, end - 8)}: file truncated")
    if version >= 3 and hashlib.sha256(blob[:end]).digest() != blob[end:]:
        raise CodecError(f"{source}: checksum mismatch: the file is truncated or corrupted")
    try:
        d = zlib.decompressobj()
        text = d.decompress(blob[8 : 8 + hlen], min(64 * hlen + (1 << 16), MAX_HEADER_BYTES))
        if not d.eof:
            raise zlib.error("header larger than it may be, or cut short")
        header = json.loads(text)
    except (zlib.error, ValueError, RecursionError) as exc:  # ValueError: JSON, UTF-8, huge integers
        raise CodecError(f"{source}: header cannot be read ({exc}): file corrupted") from None
    payload = blob[8 + hlen : end]
    if not isinstance(header, dict) or header.get("version") != version:
        got = header.get("version") if isinstance(header, dict) else type(header).__name__
        raise CodecError(f"{source}: header version {got!r} does not match the file's magic (version {version})")
    if version == 2:  # its checksum covers the payload only
        if not isinstance(header.get("sha256"), str) or hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise CodecError(f"{source}: checksum mismatch: the file is truncated or corrupted")
    check_header(header, len(payload), len(blob), source)
    return header, payload


def check_header(header: dict, payload_len: int, file_len: int, source: str = "<bytes>") -> None:
    """Schema of a header: every field of the right type and range, every slice inside its
    stream, sizes that agree with shapes, element counts under the caps."""
    def bad(msg):
        raise CodecError(f"{source}: invalid header: {msg}")

    streams, tensors = header.get("streams"), header.get("tensors")
    if not isinstance(streams, dict) or not isinstance(tensors, list):
        bad("'streams' must be an object and 'tensors' a list")
    if len(tensors) > MAX_TENSORS or len(streams) > MAX_TENSORS:
        bad(f"more than {MAX_TENSORS} tensors or streams")
    for name, e in streams.items():
        if not isinstance(e, dict) or not all(_is_count(e.get(k)) for k in ("offset", "length", "raw_length")):
            bad(f"stream {name!r}: offset, length and raw_length must be non-negative integers")
        if not isinstance(e.get("coder"), str) or e["coder"] not in CODERS:
            bad(f"stream {name!r}: unknown coder {e.get('coder')!r}")
        if e["offset"] + e["length"] > payload_len:
            bad(f"stream {name!r} ends at byte {e['offset'] + e['length']}, beyond the payload ({payload_len} bytes)")
        if e["coder"] == "raw" and e["raw_length"] != e["length"]:
            bad(f"stream {name!r}: raw, but {e['length']} bytes stored for {e['raw_length']}")
    cap = min(MAX_ELEMENTS, max(1 << 16, MAX_ELEMENTS_PER_BYTE * file_len))
    names, total, ends = set(), 0, {}
    for t in tensors:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            bad("every tensor entry must be an object with a string 'name'")
        where = f"tensor {t['name']!r}"
        if t["name"] in names:
            bad(f"{where} appears twice")
        names.add(t["name"])
        shape = t.get("shape")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(n) and n <= MAX_ELEMENTS for n in shape):
            bad(f"{where}: shape must be a list of at most 8 non-negative integers, each at most {MAX_ELEMENTS}")
        if not isinstance(t.get("dtype"), str) or t["dtype"] not in DTYPES:
            bad(f"{where}: dtype {t.get('dtype')!r} is not one of {sorted(DTYPES)}")
        keys = ENCODINGS.get(t["encoding"]) if isinstance(t.get("encoding"), str) else None
        if keys is None:
            bad(f"{where}: unknown encoding {t.get('encoding')!r}")
        size = math.prod(shape)  # Python integers: no overflow
        itemsize = np.dtype(t["dtype"]).itemsize if t["encoding"] == "dense" else 4  # shared, int8 -> float32
        total += size * max(itemsize, 4) // 4  # in float32 elements
        if total > cap:
            bad(f"{where}: {total:,} elements in all (in 4-byte units), more than this file may hold ({cap:,})")
        for k in keys:
            sl = t.get(k)
            if not (isinstance(sl, list) and len(sl) == 2 and all(_is_count(v) for v in sl)):
                bad(f"{where}: slice {k!r} must be [start, length] of non-negative integers")
            stream = _stream_of(t, k)
            if stream not in streams or sl[0] + sl[1] > streams[stream]["raw_length"]:
                bad(f"{where}: slice {k!r} lies outside stream {stream!r}")
            ends[stream] = max(ends.get(stream, 0), sl[0] + sl[1])
        if t["encoding"] == "dense" and t["values"][1] != size * itemsize:
            bad(f"{where}: {t['values'][1]} bytes of values for {size} elements of {t['dtype']}")
        if t["encoding"] == "int8":
            channels = shape[0] if shape else 1
            if t["values"][1] != size or t["scales"][1] not in {4, 4 * channels} - {0}:
                bad(f"{where}: int8 values or scales do not match the shape {shape}")
        if t["encoding"] == "shared":
            bits, nonzero = t.get("bits"), t.get("nonzero")
            if not (_is_count(bits) and 1 <= bits <= 8) or not _is_count(nonzero) or nonzero > size:
                bad(f"{where}: bits must be 1-8 and nonzero at most the tensor's size")
            book = t["codebook"][1]
            if t["codes"][1] != nonzero or book % 4 or book > 4 * (1 << bits) or t["gaps"][1] > size + size // 255 + 1:
                bad(f"{where}: codes, codebook or gaps do not match bits={bits}, nonzero={nonzero}")
    for n, end in ends.items():  # a stream in use holds exactly its tensors' bytes, nothing more
        if streams[n]["raw_length"] != end:
            bad(f"stream {n!r} declares {streams[n]['raw_length']:,} bytes but its tensors use {end:,}")


def _stream(payload: bytes, name: str, entry: dict, where: str) -> bytes:
    blob = payload[entry["offset"] : entry["offset"] + entry["length"]]
    try:
        data = _decompress(entry["coder"], blob, entry["raw_length"])
    except Exception as exc:  # zlib.error, lzma.LZMAError, OSError/EOFError from bz2, our ValueError
        raise CodecError(f"{where}: stream {name!r}: cannot decode ({exc})") from None
    if len(data) != entry["raw_length"]:
        raise CodecError(f"{where}: stream {name!r}: decoded {len(data)} bytes, expected {entry['raw_length']}")
    return data


def decode(blob: bytes, source: str = "<bytes>") -> dict[str, torch.Tensor]:
    """Parse a ``.wlc`` file's bytes back into a state dict (checksum and header checked first)."""
    header, payload = read_header(blob, source)
    used = {_stream_of(t, k) for t in header["tensors"] for k in ENCODINGS[t["encoding"]]}
    streams = {n: _stream(payload, n, e, source) for n, e in header["streams"].items() if n in used}

    def part(t, key):
        start, length = t[key]
        return streams[_stream_of(t, key)][start : start + length]

    out = {}
    for t in header["tensors"]:
        name, shape = t["name"], tuple(t["shape"])
        size = math.prod(shape)
        where = f"{source}: {name}"
        if t["encoding"] == "shared":
            mask = gaps_decode(np.frombuffer(part(t, "gaps"), np.uint8), size, where)
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
            arr = q.astype(np.float32) * scale.reshape((-1,) + (1,) * (len(shape) - 1) if scale.size > 1 else ())
        else:
            dtype = np.dtype(t["dtype"])
            arr = np.frombuffer(part(t, "values"), dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
        out[name] = torch.from_numpy(np.array(arr, copy=not arr.flags.writeable))
    return out


def save(path, state, shared=None, int8=None) -> Path:
    """Write ``state`` (a state dict) as a ``.wlc`` file at ``path``, atomically: ``shared`` layers
    (name -> ``share.SharedLayer``) as sparse positions, codebooks and codes, ``int8`` ones as int8
    values and scales, the rest dense (docs/wlc-format.md).  Introduced in notebook 03_weight_sharing,
    section "The chosen variant, with centroid fine-tuning, written to disk"."""
    blob = encode(state, shared, int8)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


def load(path, max_bytes: int = 1 << 31) -> dict[str, torch.Tensor]:
    """Read and decode a ``.wlc`` file (at most ``max_bytes`` of it).

    Introduced in notebook 03_weight_sharing, section "The chosen variant, with centroid fine-tuning, written to disk"."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CodecError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a .wlc file may have")
        blob = path.read_bytes()
    except OSError as exc:
        raise CodecError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode(blob, str(path))


def param_key(layer_name: str) -> str:
    """The state-dict key of a layer's weight.  Introduced in notebook 03_weight_sharing, section
    "The chosen variant, with centroid fine-tuning, written to disk"."""
    return f"{layer_name}.weight"


def stream_report(path) -> list[dict]:
    """Per stream: bytes stored, bytes once decoded, the coder that won, and how many tensors
    use it; read from the file's header.
    Introduced in notebook 03_weight_sharing, section "int8: the paper's "8 bits", done plainly"."""
    header, _ = read_header(Path(path).read_bytes(), str(path))
    users: dict[str, int] = {}
    for t in header["tensors"]:
        for key in ("gaps", "codes", "codebook", "scales", "values"):
            if key in t:
                users[_stream_of(t, key)] = users.get(_stream_of(t, key), 0) + 1
    return [{"stream": n, "bytes": e["length"], "raw_bytes": e["raw_length"], "coder": e["coder"],
             "tensors": users.get(n, 0)} for n, e in header["streams"].items()]
