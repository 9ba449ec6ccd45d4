"""RecordIO: the real im2rec packs read exactly; packs we write have MXNet's byte layout and read back."""
from __future__ import annotations

import hashlib
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import fixture, run_graft
from graftkit.data import ImageDataset
from graftkit.data.index import make_lists
from graftkit.data.pack import PackOptions, pack
from graftkit.data.pack_info import inspect_records
from graftkit.data.recordio import (MAGIC, MAGIC_BYTES, RecordReader, RecordWriter, encode_record, pack_header,
                                    read_idx, unpack_header)
from graftkit.errors import GraftError

IM2REC = "mxnet/im2rec"
EXPECTED = json.loads(fixture(f"{IM2REC}/recordio_expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_im2rec_packs_read_exactly(name):
    reader = RecordReader(fixture(f"{IM2REC}/{name}.rec"))
    expected = EXPECTED[name]
    assert len(reader) == len(expected)
    for i, exp in enumerate(expected):
        rec = unpack_header(reader.read(i))
        assert reader.keys[i] == exp["key"]
        assert (rec.flag, list(rec.labels), rec.id, rec.id2) == (exp["flag"], exp["label"], exp["id"], exp["id2"])
        assert hashlib.sha256(rec.image).hexdigest() == exp["payload_sha256"]
        a = np.asarray(Image.open(io.BytesIO(rec.image)).convert("RGB"))
        assert list(a.shape) == exp["decoded_shape"]
        assert a.mean() == pytest.approx(exp["decoded_mean"], abs=1e-9)


def test_im2rec_pack_without_idx_and_through_the_dataset(tmp_path):
    # scanning the .rec alone finds the same records as its .idx
    rec = tmp_path / "t.rec"
    rec.write_bytes(fixture(f"{IM2REC}/fmnist_val.rec").read_bytes())
    scanned = RecordReader(rec)
    indexed = RecordReader(fixture(f"{IM2REC}/fmnist_val.rec"))
    assert scanned.offsets == indexed.offsets and [scanned.read(i) for i in range(len(scanned))] == list(indexed)
    ds = ImageDataset.open(fixture(f"{IM2REC}/multi.rec"))
    assert ds.multi_labels == [tuple(e["label"]) for e in EXPECTED["multi"]]
    img, label = ds[0]
    assert tuple(img.shape) == (3, 56, 56) and label == int(EXPECTED["multi"][0]["label"][0])
    assert float(img.double().mean()) == pytest.approx(EXPECTED["multi"][0]["decoded_mean"], abs=1e-9)


def _parts(raw: bytes):
    """Walk the on-disk layout independently of the reader: (cflag, length, part bytes, padding)."""
    pos, out = 0, []
    while pos < len(raw):
        magic, lrec = struct.unpack_from("<II", raw, pos)
        assert magic == MAGIC
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        pad = (-length) % 4
        out.append((cflag, length, raw[pos + 8: pos + 8 + length], raw[pos + 8 + length: pos + 8 + length + pad]))
        pos += 8 + length + pad
    return out


def test_continuation_split_where_the_magic_occurs():
    payload = b"ABCD" + MAGIC_BYTES + b"EFGH" + b"x" + MAGIC_BYTES + b"IJK" + MAGIC_BYTES + MAGIC_BYTES + b"L"
    # the magic at aligned offsets 4, 20 and 24 splits the record; at offset 13 (unaligned) it stays in a part
    raw = encode_record(payload)
    parts = _parts(raw)
    assert [p[0] for p in parts] == [1, 2, 2, 3]
    assert parts[0][2] == b"ABCD" and parts[1][2] == b"EFGH" + b"x" + MAGIC_BYTES + b"IJK"
    assert parts[2][2] == b"" and parts[3][2] == b"L" and parts[3][3] == b"\0\0\0"
    assert len(raw) % 4 == 0
    from graftkit.data.recordio import read_record_at
    assert read_record_at(raw, 0)[0] == payload
    assert _parts(encode_record(b"abcde")) == [(0, 5, b"abcde", b"\0\0\0")]
    assert _parts(encode_record(MAGIC_BYTES)) == [(1, 0, b"", b""), (3, 0, b"", b"")]


def test_writer_reader_round_trip_with_idx(tmp_path):
    payloads = [pack_header(3, 7) + b"img" + MAGIC_BYTES * 3, pack_header([1.0, 2.0], 8, 5) + b"\x00" * 9, b"x" * 24]
    with RecordWriter(tmp_path / "r.rec") as w:
        for k, p in zip((7, 8, 9), payloads):
            w.write(k, p)
    idx = read_idx(tmp_path / "r.idx")
    raw = (tmp_path / "r.rec").read_bytes()
    assert [k for k, _ in idx] == [7, 8, 9] and idx[0][1] == 0
    assert all(struct.unpack_from("<I", raw, off)[0] == MAGIC for _, off in idx)
    r = RecordReader(tmp_path / "r.rec")
    assert list(r) == payloads
    rec = unpack_header(r.read(1))
    assert (rec.flag, rec.labels, rec.id, rec.id2, rec.image) == (2, (1.0, 2.0), 8, 5, b"\x00" * 9)
    assert struct.unpack("<IfQQ", payloads[0][:24]) == (0, 3.0, 7, 0)


def test_pack_like_im2rec_and_read_back(tmp_path):
    """Our pack of the im2rec list: same keys/ids/labels as im2rec's pack, images decode to the same size."""
    lst = fixture(f"{IM2REC}/fmnist_train.lst")
    (tmp_path / "imgs").symlink_to(fixture(f"{IM2REC}/imgs").resolve())
    report = pack(lst, tmp_path / "ours", root=tmp_path / "imgs", options=PackOptions(resize=32, quality=95),
                  workers=2, progress=False)
    assert report.records == 18 and not report.skipped
    ours = list(inspect_records(tmp_path / "ours"))
    theirs = EXPECTED["fmnist_train"]
    assert [(r["key"], r["flag"], r["labels"], r["id"], r["id2"]) for r in ours] == \
        [(e["key"], e["flag"], e["label"], e["id"], e["id2"]) for e in theirs]
    assert all(r["decoded"] == e["decoded_shape"][:2] for r, e in zip(ours, theirs))
    # the byte layout: every record starts at its .idx offset with the magic, is 4-byte aligned and contiguous
    raw = (tmp_path / "ours.rec").read_bytes()
    idx = read_idx(tmp_path / "ours.idx")
    offsets = [o for _, o in idx] + [len(raw)]
    for (key, off), nxt in zip(idx, offsets[1:]):
        parts = _parts(raw[off:nxt])
        assert off % 4 == 0 and parts[-1][0] in (0, 3)
        payload = MAGIC_BYTES.join(p[2] for p in parts)
        assert struct.unpack_from("<IfQQ", payload)[2] == key
    # written pack reads back identically through the dataset, in list order
    ds = ImageDataset.open(tmp_path / "ours")
    assert ds.classes == ["sneaker", "trouser", "tshirt"] or ds.classes == ["0", "1", "2"]
    assert ds.targets.tolist() == [int(e["label"][0]) for e in theirs]


def test_multilabel_png_pack_and_shards(tmp_path):
    (tmp_path / "imgs").symlink_to(fixture(f"{IM2REC}/imgs").resolve())
    report = pack(fixture(f"{IM2REC}/multi.lst"), tmp_path / "m", root=tmp_path / "imgs",
                  options=PackOptions(encoding=".png", pack_label=True), shard_size=4, workers=1, progress=False)
    assert [p.split("/")[-1] for p in report.shards] == ["m-00000.rec", "m-00001.rec"]
    ours = list(inspect_records(tmp_path / "m"))
    theirs = EXPECTED["multi"]
    assert [(r["key"], r["flag"], r["labels"]) for r in ours] == [(e["key"], e["flag"], e["label"]) for e in theirs]
    # PNG is lossless: pixels equal im2rec's (which stored the 56x56 originals re-encoded as PNG)
    theirs_reader = RecordReader(fixture(f"{IM2REC}/multi.rec"))
    ds = ImageDataset.open(tmp_path / "m")
    for i in range(len(theirs)):
        a = np.asarray(Image.open(io.BytesIO(unpack_header(theirs_reader.read(i)).image)).convert("RGB"))
        assert np.array_equal(ds[i][0].permute(1, 2, 0).numpy(), a)


def test_bad_packs(tmp_path):
    bad = tmp_path / "bad.rec"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(GraftError, match="no RecordIO magic"):
        RecordReader(bad)
    good = fixture(f"{IM2REC}/fmnist_val.rec").read_bytes()
    cut = tmp_path / "cut.rec"
    cut.write_bytes(good[: len(good) - 100])
    with pytest.raises(GraftError, match="truncated"):
        list(RecordReader(cut))


def test_cli_pack_inspect(tmp_path):
    make_lists(fixture(f"{IM2REC}/imgs"), tmp_path / "all")
    r = run_graft("data", "pack", tmp_path / "all.lst", "-o", tmp_path / "p", "--resize", "16", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["records"] == 24 and doc["skipped"] == []
    r = run_graft("data", "inspect", tmp_path / "p", "--json")
    rows = json.loads(r.stdout)["records"]
    assert len(rows) == 24 and all(min(row["decoded"]) == 16 for row in rows)
    assert [row["labels"][0] for row in rows] == [0.0] * 8 + [1.0] * 8 + [2.0] * 8


def test_pack_outputs_are_atomic(tmp_path, monkeypatch):
    make_lists(fixture(f"{IM2REC}/imgs"), tmp_path / "all")
    first = pack(tmp_path / "all.lst", tmp_path / "p", options=PackOptions(resize=16), workers=1, progress=False)
    before = (tmp_path / "p.rec").read_bytes(), (tmp_path / "p.idx").read_bytes()
    from graftkit.data import recordio

    def boom(self, key, payload):
        if self.count == 3:
            raise KeyboardInterrupt  # an interruption half-way through
        self.count += 1
    monkeypatch.setattr(recordio.RecordWriter, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        pack(tmp_path / "all.lst", tmp_path / "p", options=PackOptions(resize=8), workers=1, progress=False)
    assert ((tmp_path / "p.rec").read_bytes(), (tmp_path / "p.idx").read_bytes()) == before  # old pack intact
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    monkeypatch.undo()
    bad = tmp_path / "bad.lst"
    bad.write_text("0\t0\tnot/here.jpg\n1\t0\t../../etc/passwd\n")
    with pytest.raises(GraftError, match="none of the 2 images could be packed"):
        pack(bad, tmp_path / "nothing", workers=1, progress=False)
    assert not list(tmp_path.glob("nothing*"))
    assert first.records == 24


def test_a_record_that_fails_to_decode_is_skipped_and_counted(tmp_path):
    good = RecordReader(fixture(f"{IM2REC}/fmnist_val.rec"))
    with RecordWriter(tmp_path / "mixed.rec") as w:
        w.write(0, good.read(0))
        w.write(1, pack_header(1, 1) + b"\xff\xd8\xff\xe0 this is not really a JPEG")
        w.write(2, good.read(1))
    from graftkit.data import train_pipeline
    ds = ImageDataset.open(tmp_path / "mixed", train_pipeline({"input_size": [3, 16, 16]}))
    xs = [ds[i][0] for i in range(3)]
    assert all(x.shape == (3, 16, 16) for x in xs) and ds.failed == [1] and ds.num_failed == 1


def test_record_split_inside_its_header_reads_back(tmp_path):
    """An id whose low word equals the magic puts the magic at aligned offset 8: the split falls in the header."""
    image = fixture(f"{IM2REC}/imgs/sneaker/00.jpg").read_bytes()
    with RecordWriter(tmp_path / "s.rec") as w:
        w.write(0, pack_header(2.0, MAGIC) + image)
    raw = (tmp_path / "s.rec").read_bytes()
    parts = _parts(raw)
    assert parts[0][:2] == (1, 8) and parts[-1][0] == 3  # flag + label, then the rest after the magic
    rec = unpack_header(RecordReader(tmp_path / "s.rec").read(0))
    assert (rec.id, rec.labels, rec.image) == (MAGIC, (2.0,), image)
    ds = ImageDataset.open(tmp_path / "s")
    assert ds.targets.tolist() == [2] and tuple(ds[0][0].shape) == (3, 56, 56)


@pytest.mark.parametrize("label", [3e9, float("nan"), float("inf")])
def test_a_record_label_that_is_no_class_index_is_one_error(tmp_path, label):
    """A label of 3e9 once built billions of class names; NaN crashed int()."""
    from graftkit.data import ImageDataset
    from graftkit.errors import GraftError
    with RecordWriter(tmp_path / "r.rec") as w:
        w.write(0, pack_header(0, 0) + b"img")
        w.write(1, pack_header(label, 1) + b"img")
    with pytest.raises(GraftError, match=r"r.rec record 1: label .* is not a class index"):
        ImageDataset.open(tmp_path / "r.rec")
