import json
import struct

import pytest
import timm
import torch

import graftkit
from graftkit.errors import GraftError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    net = timm.create_model("efficientnet_lite0", num_classes=5).eval()
    path = tmp_path_factory.mktemp("pkg") / "net.safetensors"
    graftkit.save(net, path, spec="timm:efficientnet_lite0?num_classes=5", classes=list("abcde"),
                  preprocessing=graftkit.package.imagenet_preprocessing())
    return net, path


def test_roundtrip_same_function_and_keys(saved):
    net, path = saved
    loaded = graftkit.load(path)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(net(x), loaded(x))
    assert list(loaded.state_dict()) == list(net.state_dict())
    assert loaded.graftkit_meta["classes"] == list("abcde")


def test_plain_safetensors_sees_exact_state_dict_keys(saved):
    from safetensors.torch import load_file
    net, path = saved
    assert set(load_file(str(path))) == set(net.state_dict())


def test_written_data_is_what_safetensors_reads_and_lies_aligned(saved, tmp_path):
    from safetensors.torch import load_file
    net, path = saved
    state, back = net.state_dict(), load_file(str(path))
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items())
    loaded = graftkit.load(path)
    # tensors whose size is a multiple of 64 bytes start 64-byte aligned, as a fresh allocation does
    sizes = [(t.data_ptr(), t.numel() * t.element_size()) for t in loaded.state_dict().values() if t.numel()]
    assert all(ptr % 64 == 0 for ptr, size in sizes if size % 64 == 0)
    # any dtype safetensors stores, 0-d and empty tensors included
    odd = {"b": torch.tensor(3.0, dtype=torch.bfloat16), "e": torch.empty(0, 3), "i": torch.arange(5),
           "m": torch.tensor([[True, False]]).t()}  # (not contiguous)
    with open(tmp_path / "odd.safetensors", "wb") as f:
        graftkit.formats.safetensors_file.write_safetensors(f, odd)
    back = load_file(str(tmp_path / "odd.safetensors"))
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in odd.items())


def test_metadata_json_that_orjson_refuses_still_loads(saved, tmp_path):
    net, _ = saved
    path = graftkit.save(net, tmp_path / "nan.safetensors", extra={"best_loss": float("nan"), "big": 2 ** 70})
    extra = graftkit.load(path).graftkit_meta["extra"]
    assert extra["big"] == 2 ** 70 and extra["best_loss"] != extra["best_loss"]


def test_read_keeps_module_order(saved):
    net, path = saved
    ts = graftkit.read(path)
    assert ts.format == "graftkit package"
    assert list(ts) == list(net.state_dict())


def test_load_is_a_memory_map_not_a_copy(saved):
    _, path = saved
    loaded = graftkit.load(path)
    # Tensors wrap the mapped file: they are not owned (resizable) allocations.
    w = loaded.conv_stem.weight
    assert not w.untyped_storage().resizable()


@pytest.mark.parametrize("damage", ["truncate", "header", "offsets"])
def test_corrupt_packages_give_one_clear_error(saved, tmp_path, damage):
    _, path = saved
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.safetensors"
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "header":
        data[8:20] = b"not json at!"
    else:
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        first = next(k for k in header if k != "__metadata__")
        header[first]["data_offsets"] = [0, 10**12]
        h = json.dumps(header).encode()
        data = struct.pack("<Q", len(h)) + h + data[8 + n:]
    bad.write_bytes(bytes(data))
    with pytest.raises(GraftError):
        graftkit.load(bad)


def test_cli_inspect_json(saved, graft):
    _, path = saved
    r = graft("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    names = [t["name"] for t in doc["tensors"]]
    assert names[0] == "conv_stem.weight" and {"name", "shape", "dtype"} <= set(doc["tensors"][0])


def test_cli_missing_file_is_one_line(graft, tmp_path):
    r = graft("inspect", tmp_path / "nope.pth")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr


def test_saved_files_get_ordinary_permissions(saved, tmp_path):
    """Atomic writes go through a private temporary file; the result is readable like any new file,
    and replacing a file keeps its permissions."""
    import os
    net, _ = saved
    umask = os.umask(0o022)
    try:
        path = graftkit.save(net, tmp_path / "p.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
        os.chmod(path, 0o640)
        graftkit.save(net, path)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
