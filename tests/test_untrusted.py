"""Untrusted files stay harmless: no code runs from a checkpoint or a config, `.wlc` decoding is
bounded and validated, the VOC loader refuses what it should, the runner checks its arguments.
Property-based (Hypothesis) fuzzing of the two parsers: only their own errors ever escape."""
import gzip
import hashlib
import json
import os
import pickle
import struct
import threading
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wildlib import codec, config, data, io as wio, modeling, runner

from .conftest import voc_xml


class _Touch:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------- checkpoints, configs
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_a_crafted_checkpoint_runs_no_code(untrained_cfg, tmp_path, suffix):
    marker = tmp_path / "ran"
    path = tmp_path / f"evil{suffix}"
    payload = {"model": {"w": _Touch(marker)}, "__author__": "x"}
    with open(path, "wb") as fh:
        pickle.dump(payload, fh)
    with pytest.raises(modeling.WeightsError, match="evil"):  # build_model itself: the entry point
        modeling.build_model(untrained_cfg, weights=str(path))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f",  # overflowing length
                                     pickle.dumps({"model": {"w": 1}, "__author__": "x"}),  # not arrays
                                     pickle.dumps({"blobs": [1]}), pickle.dumps({1: np.zeros(2)})])
def test_malformed_pickles_are_weights_errors(untrained_cfg, tmp_path, content):
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    with pytest.raises(modeling.WeightsError, match="bad.pkl"):
        modeling.build_model(untrained_cfg, weights=str(path))


def test_model_zoo_pickle_of_arrays_still_loads(tmp_path):
    path = tmp_path / "zoo.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "__author__": "zoo"}, fh)
    data_ = modeling.read_pickled_weights(path)
    assert np.array_equal(data_["model"]["a"], np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("key", ["dense/w", "sparse/w/values"])
def test_a_sparse_file_with_a_pickled_object_runs_no_code(tmp_path, key):
    """A pruned model's ``.npz`` (wildlib.prune.save_sparse) is read with allow_pickle=False: an
    object array (a pickle inside the npz) is refused, and what it would call is never called."""
    from wildlib import prune as wp

    marker = tmp_path / "ran"
    path = tmp_path / "evil.npz"
    arrays = {"sparse/w/mask": np.packbits(np.ones(1, bool)), "sparse/w/values": np.zeros(1, np.float32),
              "sparse/w/shape": np.array([1], np.int64)}
    arrays[key] = np.array([_Touch(marker)], dtype=object)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # pickling only records the call: nothing runs while writing
    assert not marker.exists()
    with pytest.raises(wp.SparseFileError, match="evil.npz.*allow_pickle"):
        wp.load_sparse(path)
    assert not marker.exists()


@pytest.mark.parametrize("shape", [[1 << 40], [-8], [9]])
def test_a_sparse_file_cannot_claim_more_than_it_holds(tmp_path, shape):
    """The shape is checked against the stored bitmask (8 bits per byte) before the dense tensor
    is allocated: a file of a few bytes cannot ask for a terabyte."""
    from wildlib import prune as wp

    path = tmp_path / "big.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **{"sparse/w/mask": np.packbits(np.ones(8, bool)), "sparse/w/values": np.ones(8, np.float32),
                        "sparse/w/shape": np.array(shape, np.int64)})
    with pytest.raises(wp.SparseFileError, match="big.npz.*(claims shape|no valid shape)"):
        wp.load_sparse(path)


def test_a_sparse_file_member_header_is_checked_before_numpy_allocates(tmp_path):
    """A member's .npy header may claim a terabyte over a few bytes of data, and a compressed
    member may inflate far beyond the file: both refused before numpy reads them."""
    import io
    import zipfile

    from wildlib import prune as wp

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as zf:
        zf.writestr("dense/w.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(wp.SparseFileError, match="huge.npz: dense/w.npy claims shape"):
        wp.load_sparse(tmp_path / "huge.npz")
    np.savez_compressed(tmp_path / "zipped.npz", **{"dense/w": np.zeros(4, np.float32)})
    with pytest.raises(wp.SparseFileError, match="zipped.npz: dense/w.npy is compressed"):
        wp.load_sparse(tmp_path / "zipped.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK not a zip")
    with pytest.raises(wp.SparseFileError, match="junk.npz: not a readable sparse weights file"):
        wp.load_sparse(tmp_path / "junk.npz")


def test_a_yaml_config_with_a_python_tag_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"_BASE_: []\nMODEL:\n  WEIGHTS: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    with pytest.raises(config.ConfigError, match="evil.yaml"):
        config.get_config(str(path))
    assert not marker.exists()


# ----------------------------------------------------------------------------- .wlc
@pytest.fixture(scope="module")
def wlc_blob():
    state = {"conv.weight": torch.randn(8, 4, 3, 3), "conv.bias": torch.randn(8), "n": torch.tensor(3)}
    q = np.clip(np.round(state["conv.weight"].numpy() * 50), -127, 127).astype(np.int8)
    state["conv.weight"] = torch.from_numpy(q.astype(np.float32) / 50)
    return codec.encode(state, int8={"conv.weight": (q, np.float32(1 / 50))})


def _split(blob):
    (hlen,) = struct.unpack("<I", blob[4:8])
    return json.loads(zlib.decompress(blob[8 : 8 + hlen])), blob[8 + hlen : -codec.DIGEST]


def _rebuild(header, payload, magic=codec.MAGIC):
    """A file with a (possibly edited) header and a valid checksum: gets past the checksum, so
    the header's own validation is what is tested."""
    h = zlib.compress(json.dumps(header).encode())
    body = magic + struct.pack("<I", len(h)) + h + payload
    return body + hashlib.sha256(body).digest()


def test_v3_roundtrip_and_v2_files_still_read(wlc_blob):
    back = codec.decode(wlc_blob)
    header, payload = _split(wlc_blob)
    header.update(version=2, sha256=hashlib.sha256(payload).hexdigest())
    h = zlib.compress(json.dumps(header).encode())
    v2 = b"WLC2" + struct.pack("<I", len(h)) + h + payload
    back2 = codec.decode(v2, "v2.wlc")
    assert all(torch.equal(back[k], back2[k]) for k in back)


def test_the_checksum_covers_the_header(wlc_blob):
    header, payload = _split(wlc_blob)
    header["tensors"][1]["shape"] = [4, 2]  # edit a shape, leave the payload and checksum alone
    h = zlib.compress(json.dumps(header).encode())
    forged = codec.MAGIC + struct.pack("<I", len(h)) + h + payload + wlc_blob[-codec.DIGEST:]
    with pytest.raises(codec.CodecError, match="checksum"):
        codec.decode(forged, "forged.wlc")


@pytest.mark.parametrize("edit, fragment", [
    (lambda h: h.update(tensors=[dict(h["tensors"][0], shape=[1 << 20, 1 << 20])]), "elements"),
    (lambda h: h["tensors"].append(dict(h["tensors"][0])), "twice"),
    (lambda h: h["streams"]["int8"].update(offset=-1), "non-negative"),
    (lambda h: h["tensors"][1].update(dtype="complex64"), "dtype"),
    (lambda h: h["tensors"][1].update(dtype="object"), "dtype"),
    (lambda h: h.pop("tensors"), "'tensors'"),
    (lambda h: h["tensors"][0].update(values=[0, 10 ** 9]), "outside stream"),
    (lambda h: h["tensors"][0].update(encoding="pickle"), "encoding"),
    (lambda h: h["tensors"][0].update(shape="8"), "shape"),
    (lambda h: h["streams"]["int8"].update(coder="zip"), "coder"),
    (lambda h: h["tensors"][1].update(shape=[2 ** 32, 2 ** 32]), "shape"),  # would wrap to 0 in int64
    (lambda h: h["tensors"][1].update(shape=[0, 8], values=[0, 0]), "declares"),  # stream larger than its use
    (lambda h: h["tensors"][0].update(shape=[0], values=[0, 0], scales=[0, 0]), "int8 values or scales"),
    (lambda h: h["tensors"].extend([{"name": f"t{i}"} for i in range(codec.MAX_TENSORS)]), "more than"),
])
def test_invalid_headers_are_refused_before_allocating(wlc_blob, edit, fragment):
    header, payload = _split(wlc_blob)
    edit(header)
    with pytest.raises(codec.CodecError, match=fragment):
        codec.decode(_rebuild(header, payload), "bad.wlc")


@pytest.mark.parametrize("header", [[], None, 3, "x"])
def test_a_header_that_is_not_an_object(header):
    """Also: not JSON an object at all."""
    with pytest.raises(codec.CodecError, match="bad.wlc"):
        codec.decode(_rebuild(header, b""), "bad.wlc")


def test_decompression_is_capped_and_unused_streams_are_not_decoded(wlc_blob):
    import bz2

    header, payload = _split(wlc_blob)
    bomb = bz2.compress(bytes(64 << 20))  # 64 MiB of zeros in a few dozen bytes
    # a stream that no tensor uses: never decoded
    header["streams"]["unused"] = {"offset": len(payload), "length": len(bomb), "coder": "bz2", "raw_length": 64 << 20}
    tracemalloc.start()
    codec.decode(_rebuild(header, payload + bomb), "unused.wlc")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20
    # a used stream whose header understates what it decodes to: stopped at the declared size
    header, payload = _split(wlc_blob)
    e = header["streams"]["dense.float32"]
    header["streams"]["dense.float32"] = {**e, "offset": len(payload), "length": len(bomb), "coder": "bz2"}
    tracemalloc.start()
    with pytest.raises(codec.CodecError, match="more than"):
        codec.decode(_rebuild(header, payload + bomb), "bomb.wlc")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20


def test_a_header_with_a_huge_integer():
    h = zlib.compress(b'{"version": 3, "x": ' + b"1" * 5000 + b"}")
    body = codec.MAGIC + struct.pack("<I", len(h)) + h
    with pytest.raises(codec.CodecError, match="header cannot be read"):
        codec.decode(body + hashlib.sha256(body).digest(), "big.wlc")


def test_unknown_magic_is_not_called_older():
    with pytest.raises(codec.CodecError) as e:
        codec.decode(b"WLC9" + bytes(40), "x.wlc")
    assert "older" not in str(e.value) and "version 9" in str(e.value)


def _mutations():
    return st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 10 ** 6),
                              st.integers(0, 255)), min_size=1, max_size=6)


def _damaged(blob: bytes, ops) -> bytes:
    """``blob`` with the byte flips, cuts and insertions of :func:`_mutations` applied."""
    b = bytearray(blob)
    for op, pos, val in ops:
        pos %= max(1, len(b))
        if op == "flip" and b:
            b[pos] ^= val or 1
        elif op == "cut":
            del b[pos:]
        elif op == "insert":
            b.insert(pos, val)
    return bytes(b)


@settings(max_examples=int(os.environ.get("WILDLIB_FUZZ_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_mutations())
def test_fuzz_wlc_bytes(wlc_blob, ops):
    """Random byte damage: only CodecError, within a memory bound."""
    _decodes_or_codec_error(_damaged(wlc_blob, ops))


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                           max_leaves=8)


@settings(max_examples=int(os.environ.get("WILDLIB_FUZZ_EXAMPLES", 200)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(["streams", "tensors", 0, 1, 2, "int8", "shape", "dtype", "values", "scales",
                                      "offset", "length", "raw_length", "coder", "name", "encoding"]),
                     min_size=1, max_size=3),
       value=json_values)
def test_fuzz_wlc_header(wlc_blob, path, value):
    """Any field of the header replaced by any JSON value (checksum made valid): only CodecError."""
    header, payload = _split(wlc_blob)
    node = header
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    try:
        node[path[-1]] = value
    except (IndexError, TypeError):
        return
    _decodes_or_codec_error(_rebuild(header, payload))


def _decodes_or_codec_error(blob):
    tracemalloc.start()
    try:
        codec.decode(blob, "fuzz.wlc")
    except codec.CodecError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 32 << 20


@pytest.fixture(scope="module")
def sparse_blob(tmp_path_factory) -> bytes:
    """The bytes of a small valid sparse file (wildlib.prune.save_sparse): a half-zero linear layer."""
    from wildlib import prune as wp

    layer = torch.nn.Linear(16, 16)
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    return wp.save_sparse(layer, tmp_path_factory.mktemp("sparse") / "ok.npz").read_bytes()


@settings(max_examples=int(os.environ.get("WILDLIB_FUZZ_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_mutations())
def test_fuzz_sparse_file_bytes(sparse_blob, tmp_path, ops):
    """Random byte damage to a sparse .npz: it loads or raises SparseFileError naming the file,
    within a memory bound."""
    from wildlib import prune as wp

    path = tmp_path / "fuzz.npz"
    path.write_bytes(_damaged(sparse_blob, ops))
    tracemalloc.start()
    try:
        wp.load_sparse(path)
    except wp.SparseFileError as e:
        assert "fuzz.npz" in str(e)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 32 << 20


# ----------------------------------------------------------------------------- VOC loader
@pytest.mark.parametrize("bad_id", ["../../x/evil", "/etc/passwd", "a/../../b", "..", "x" * 300])
def test_ids_that_leave_the_dataset_folder_are_refused(voc_dir, bad_id):
    (voc_dir / "train.txt").write_text(f"img1\n{bad_id}\n")
    with pytest.raises(data.DatasetError, match="outside the dataset folder|too long"):
        data.load_split(voc_dir, "train")


def test_ids_are_normalised(voc_dir):
    (voc_dir / "train.txt").write_text("img1\n./img1\n")
    with pytest.raises(data.DatasetError, match="listed twice"):
        data.load_split(voc_dir, "train")


def test_a_truncated_jpeg_is_caught_when_loading(voc_dir):
    img = voc_dir / "images" / "img2.jpg"
    Image.effect_noise((64, 48), 60).convert("RGB").save(img, quality=95)
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    with pytest.raises(data.DatasetError, match="img2.jpg"):
        data.load_split(voc_dir, "train")
    assert [r["voc_id"] for r in data.load_split(voc_dir, "train", on_error="warn",
                                                 report_path=voc_dir.parent / "r.json")] == ["img1"]


@pytest.mark.parametrize("coord", ["inf", "1e400", "nan", "abc"])
def test_non_finite_coordinates(voc_dir, coord, tmp_path):
    (voc_dir / "annotations" / "img1.xml").write_text(
        voc_xml(objects=[("zebra", (5, 6, 30, 40)), ("lion", (1, 1, 10, 10))]).replace("<xmin>1</xmin>", f"<xmin>{coord}</xmin>"))
    with pytest.raises(data.DatasetError, match="img1.xml.*finite"):
        data.load_split(voc_dir, "train")
    with pytest.warns(UserWarning):
        recs = data.load_split(voc_dir, "train", on_error="warn", report_path=tmp_path / "r.json")
    assert len(recs[0]["annotations"]) == 1  # only the bad box dropped


def test_non_utf8_split_file_names_the_file(voc_dir):
    (voc_dir / "train.txt").write_bytes(b"img1\n\xff\xfe\n")
    with pytest.raises(data.DatasetError, match="train.txt.*UTF-8"):
        data.load_split(voc_dir, "train")


def test_an_annotation_that_is_a_folder(voc_dir):
    (voc_dir / "annotations" / "img2.xml").unlink()
    (voc_dir / "annotations" / "img2.xml").mkdir()
    with pytest.raises(data.DatasetError, match="img2.xml"):
        data.load_split(voc_dir, "train")


@pytest.mark.parametrize("broken", ["<annotation><size>", "<annotation><object/></annotation>",
                                    voc_xml().replace("<xmax>30</xmax>", "<xmax>x</xmax>")])
def test_warn_mode_drops_only_the_bad_item(voc_dir, broken, tmp_path):
    (voc_dir / "annotations" / "img2.xml").write_text(broken)
    with pytest.raises(data.DatasetError, match="img2.xml"):
        data.load_split(voc_dir, "train")
    with pytest.warns(UserWarning):
        recs = data.load_split(voc_dir, "train", on_error="warn", report_path=tmp_path / "r.json")
    assert "img1" in [r["voc_id"] for r in recs]


def test_entity_expansion_is_refused(voc_dir):
    bomb = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            "<annotation><filename>&b;</filename></annotation>")
    (voc_dir / "annotations" / "img1.xml").write_text(bomb)
    with pytest.raises(data.DatasetError, match="img1.xml.*DTD"):
        data.load_split(voc_dir, "train")


def test_the_same_image_in_train_and_valid(voc_dir, tmp_path):
    (voc_dir / "valid.txt").write_text("img3\nimg1\n")
    with pytest.raises(data.DatasetError, match="valid.txt.*img1.*train.txt"):
        data.register(voc_dir, coco_dir=tmp_path / "coco")


@settings(max_examples=int(os.environ.get("WILDLIB_FUZZ_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(xml=st.one_of(st.text(max_size=300),
                     st.builds(lambda a, b, v: voc_xml().replace(a, b.replace("{}", v)),
                               st.sampled_from(["<xmin>5</xmin>", "<width>64</width>", "<name>zebra</name>",
                                                "<size>", "</object>", "<bndbox>"]),
                               st.sampled_from(["<xmin>{}</xmin>", "<width>{}</width>", "<name>{}</name>", "{}", ""]),
                               st.text(max_size=12))),
       split=st.binary(max_size=60),
       on_error=st.sampled_from(["raise", "warn"]))
def test_fuzz_voc(voc_dir, tmp_path_factory, xml, split, on_error):
    """Any annotation text and any split file: a list of records or DatasetError, nothing else."""
    (voc_dir / "annotations" / "img1.xml").write_text(xml, encoding="utf-8", errors="surrogatepass")
    (voc_dir / "train.txt").write_bytes(b"img1\n" + split)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            recs = data.load_split(voc_dir, "train", on_error=on_error,
                                   report_path=tmp_path_factory.mktemp("r") / "r.json")
        except data.DatasetError:
            return
    for r in recs:
        for a in r["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]


# ----------------------------------------------------------------------------- runner, writes
@pytest.mark.parametrize("argv, fragment", [
    (["--only"], "needs notebook numbers"),
    (["--only", "0"], "no such notebook"),
    (["--only", "01", "zz"], "no such notebook"),
    (["--only", "01", "-p", "MAX_ITER", "abc"], "MAX_ITER takes a number"),
    (["--only", "01", "-p", "RESUME", "1"], "RESUME takes a bool"),
    (["--only", "01", "-p", "RUN_DIR", "x"], "--run-dir"),
    (["--only", "01", "--timeout", "-1"], "timeout must be positive"),
    (["--only", "01", "--timeout", "nan"], "timeout must be positive"),
    (["--only", "01", "-p", "LR", "0.1", "-p", "LR", "0.2"], "twice"),
])
def test_runner_refuses_bad_arguments_before_running(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit):
        runner.main(["--run-dir", str(tmp_path / "r")] + argv)
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "r" / "notebooks").exists()


def test_a_bad_timeout_variable_leaves_help_working(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WILDLIB_NB_TIMEOUT", "soon")
    with pytest.raises(SystemExit) as e:
        runner.main(["--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit):
        runner.main(["--run-dir", str(tmp_path), "--only", "00"])
    assert "WILDLIB_NB_TIMEOUT" in capsys.readouterr().err


def test_atomic_writes_keep_the_umask_and_leave_no_temp_files(tmp_path):
    old = os.umask(0o027)
    try:
        threads = [threading.Thread(target=wio.write_text, args=(tmp_path / f"f{i}.txt", "x" * 1000))
                   for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert os.umask(0o027) == 0o027  # nobody changed it meanwhile
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"f{i}.txt" for i in range(16))
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o640}
    with pytest.raises(RuntimeError):
        wio.atomic_write(tmp_path / "f0.txt", lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")))
    assert (tmp_path / "f0.txt").read_text() == "x" * 1000 and len(list(tmp_path.iterdir())) == 16


# ----------------------------------------------------------------------------- gzipped JSON records
def test_gzipped_json_round_trips_and_bad_files_are_named(tmp_path):
    path = wio.write_json(tmp_path / "r.json.gz", {"ap": np.float32(0.5), "nan": float("nan"), "boxes": [[1, 2, 3, 4]]})
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip, not text
    assert wio.read_json(path) == {"ap": 0.5, "nan": None, "boxes": [[1, 2, 3, 4]]}
    assert path.read_bytes()[4:8] == bytes(4)  # gzip's MTIME field empty: the same record, the same bytes
    for name, payload, says in [("text.json.gz", b'{"a": 1}', "not a gzipped JSON file"),
                                ("cut.json.gz", path.read_bytes()[:-12], "cut short"),
                                ("half.json.gz", _gzip(b'{"a": '), "not valid JSON"),
                                ("two.json.gz", path.read_bytes() + _gzip(b"{}"), "bytes after its one gzip member"),
                                ("latin.json", '{"a": "\u00e9"}'.encode("latin-1"), "not valid JSON")]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=says) as err:
            wio.read_json(tmp_path / name)
        assert name in str(err.value)


def test_a_gzip_bomb_is_refused_before_it_fills_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(wio, "MAX_GUNZIP_BYTES", 1 << 20)
    (tmp_path / "bomb.json.gz").write_bytes(_gzip(b" " * (64 << 20)))  # 64 MiB of spaces in about 64 KiB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="unpacks to more than"):
            wio.read_json(tmp_path / "bomb.json.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def _gzip(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)
