"""graft evaluate / predict / export on tiny packages whose answers are known in advance."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import graftkit
import graftkit.nets.spec  # (make_package builds from a spec before any package is saved)
from graftkit.cli.main import main as graft_main
from graftkit.errors import GraftError
from graftkit.serve import evaluate, export_onnx, export_torchscript, predict

# The tiny net scores each class by one colour channel's mean: a solid red image is "red", etc.
NET_SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn

    class ColourNet(nn.Module):
        def __init__(self, outputs="tensor"):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(3, 3)
            self.aux = nn.Linear(3, 3)
            self.outputs = outputs

        def forward(self, x):
            z = self.pool(x).flatten(1)
            main = self.fc(z)
            if self.outputs == "dict":   # a converted multi-output net: aux head listed first
                return {"loss1/classifier": self.aux(z), "loss3/classifier": main}
            if self.outputs == "tuple":  # Inception style: (logits, aux_logits)
                return main, self.aux(z)
            return main

    class SvdNet(ColourNet):  # an operator ONNX has no export for
        def forward(self, x):
            return self.fc(torch.linalg.svdvals(x.flatten(2)))[:, :3]

    def make(outputs="tensor"):
        return ColourNet(outputs)

    def make_svd():
        return SvdNet()
''')
MODEL_CLASSES = ["red", "green", "blue"]     # output i scores channel i
PREP = {"input_size": [3, 8, 8], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
        "pixel_range": 1.0, "channel_order": "RGB"}
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


def make_package(folder, outputs="tensor", classes=MODEL_CLASSES):
    src = folder / "colournet.py"
    src.write_text(NET_SOURCE)
    spec = f"{src}:make?outputs={outputs}"
    net = graftkit.nets.spec.build(spec, trust=True)
    with torch.no_grad():
        net.fc.weight.copy_(torch.eye(3) * 4)
        net.fc.bias.zero_()
        net.aux.weight.copy_(torch.eye(3).flip(0) * 4)  # the aux head would answer wrongly
        net.aux.bias.zero_()
    path = folder / f"colour_{outputs}.safetensors"
    graftkit.save(net, path, spec=spec, classes=classes, preprocessing=PREP)
    return path


def solid(path, colour, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


class ImagesDataset(torch.utils.data.Dataset):
    """A labelled list of solid images, already preprocessed (the dataset form evaluate() accepts)."""

    def __init__(self, classes, items):
        self.classes, self.items = classes, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        colour, label = self.items[i]
        x = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1).expand(3, 8, 8) / 255
        return (x - 0.5) / 0.5, label


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg"))


def run_cli(capsys, *args):
    """The real `graft` entry point, in-process; returns (exit code, stdout, stderr). The packages
    here are built from this test's own Python file, so the serving commands get --trust."""
    code = 0
    trust = ["--trust"] if args and args[0] in ("evaluate", "predict", "export") else []
    try:
        graft_main([str(a) for a in args] + trust)
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- evaluate

def test_confusion_matches_known_answers_with_classes_matched_by_name(pkg):
    # The data's label order (sorted names) differs from the model's: blue=0, green=1, red=2.
    data_classes = ["blue", "green", "red"]
    items = ([(COLOURS["blue"], 0)] * 3 + [(COLOURS["green"], 1)] * 2 + [(COLOURS["red"], 1)]  # 1 wrong label
             + [(COLOURS["red"], 2)] * 4)
    r = evaluate(pkg, ImagesDataset(data_classes, items), batch_size=4, progress=False, trust=True)
    assert r["confusion"] == [[3, 0, 0], [0, 2, 1], [0, 0, 4]]
    assert r["n"] == 10 and r["top1"] == pytest.approx(0.9)
    assert r["per_class"] == {"blue": 1.0, "green": pytest.approx(2 / 3), "red": 1.0}
    assert r["top5"] == 1.0 and r["k"] == 3  # three classes: top-5 is top-3, always a hit


def test_confusion_agrees_with_a_direct_computation(pkg):
    gen = np.random.default_rng(0)
    colours = [tuple(int(v) for v in gen.integers(0, 256, 3)) for _ in range(40)]
    labels = [int(v) for v in gen.integers(0, 3, 40)]
    r = evaluate(pkg, ImagesDataset(MODEL_CLASSES, list(zip(colours, labels))), batch_size=16, progress=False, trust=True)
    model = graftkit.load(pkg, trust=True)
    x = torch.stack([ImagesDataset(MODEL_CLASSES, [(c, 0)])[0][0] for c in colours])
    logits = model(x)
    pred = logits.argmax(1).tolist()
    want = np.zeros((3, 3), int)
    for t, p in zip(labels, pred):
        want[t, p] += 1
    assert r["confusion"] == want.tolist()
    top2 = logits.topk(2, dim=1).indices
    assert r["top1"] == pytest.approx(np.trace(want) / 40)
    assert r["per_class"]["green"] == pytest.approx(want[1, 1] / want[1].sum())
    assert r["top5"] == 1.0
    assert sum(int(l in row) for l, row in zip(labels, top2.tolist())) / 40 <= r["top5"]


def test_model_with_extra_classes_gets_an_other_column(tmp_path):
    path = make_package(tmp_path, classes=["red", "green", "blue"])
    items = [(COLOURS["red"], 0), (COLOURS["blue"], 0), (COLOURS["red"], 1)]
    r = evaluate(path, ImagesDataset(["red", "green"], items), progress=False, trust=True)
    # blue is a model class the data lacks: predictions of it go to "(other)".
    assert r["columns"] == ["red", "green", "(other)"]
    assert r["confusion"] == [[1, 0, 1], [1, 0, 0]]


def test_class_mismatch_is_one_clear_error(pkg):
    with pytest.raises(GraftError, match="classes the model does not know: 'purple'"):
        evaluate(pkg, ImagesDataset(["red", "purple"], [(COLOURS["red"], 0)]), progress=False, trust=True)


def test_evaluate_writes_metrics_and_confusion_png(pkg, tmp_path):
    items = [(COLOURS["red"], 0), (COLOURS["green"], 1), (COLOURS["blue"], 2)]
    evaluate(pkg, ImagesDataset(MODEL_CLASSES, items), out_dir=tmp_path / "out", progress=False, trust=True)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["top1"] == 1.0
    png = (tmp_path / "out" / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(tmp_path / "out" / "confusion.png").size[0] > 100


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name, n in (("blue", 2), ("green", 3), ("red", 1)):
        for i in range(n):
            solid(root / name / f"{i}.png", COLOURS[name])
    solid(root / "green" / "x_wrong.png", COLOURS["red"])  # a red image filed under green
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # undecodable: left out
    return root


def test_cli_evaluate_folder_json_and_plot(capsys, pkg, folder, tmp_path):
    code, out, err = run_cli(capsys, "evaluate", pkg, folder, "--json", "-o", tmp_path / "ev", "--batch-size", "3")
    assert code == 0, err
    r = json.loads(out)
    # folders sort blue, green, red; the model's order is red, green, blue: matched by name
    assert r["classes"] == ["blue", "green", "red"]
    assert r["confusion"] == [[2, 0, 0], [0, 3, 1], [0, 0, 1]]
    assert r["n"] == 7 and r["top1"] == pytest.approx(6 / 7) and r["skipped"] == 1
    assert "broken.png" in r["skipped_files"][0]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["confusion"] == r["confusion"]
    assert (tmp_path / "ev" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_a_list_gives_the_same_answer(pkg, folder, tmp_path):
    from graftkit.data import make_lists
    lst = make_lists(folder, tmp_path / "all.lst")["all"]
    r = evaluate(pkg, lst, progress=False, trust=True)
    assert r["confusion"] == [[2, 0, 0], [0, 3, 1], [0, 0, 1]] and r["skipped"] == 1


def test_evaluate_a_recordio_pack(pkg, folder, tmp_path):
    from graftkit.data import make_lists
    from graftkit.data.pack import PackOptions, pack
    lst = make_lists(folder, tmp_path / "all.lst")["all"]
    done = pack(lst, tmp_path / "packs" / "all", options=PackOptions(encoding=".png"), workers=1, progress=False)
    assert done.records == 7  # the broken file is left out when packing
    r = evaluate(pkg, tmp_path / "packs" / "all", progress=False, trust=True)
    assert r["confusion"] == [[2, 0, 0], [0, 3, 1], [0, 0, 1]] and "skipped" not in r


def test_cli_evaluate_table(capsys, pkg, folder):
    code, out, err = run_cli(capsys, "evaluate", pkg, folder)
    assert code == 0, err
    assert "top-1 85.71%" in out and "green" in out


def test_cli_evaluate_class_mismatch(capsys, tmp_path, folder):
    other = make_package(tmp_path, classes=["cyan", "magenta", "yellow"])
    code, _, err = run_cli(capsys, "evaluate", other, folder)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "classes the model does not know: 'blue', 'green', 'red'" in err


# ---------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    solid(root / "a" / "r.png", COLOURS["red"])
    solid(root / "a" / "deep" / "g.jpg", COLOURS["green"])
    solid(root / "b.bmp", COLOURS["blue"])
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_predict_files_and_folders_recursively(pkg, images):
    results = predict(pkg, [images / "b.bmp", images / "a"], top_k=2, progress=False, trust=True)
    assert [r["input"] for r in results] == [str(images / "b.bmp"), str(images / "a" / "deep" / "g.jpg"),
                                             str(images / "a" / "r.png")]
    assert [r["predictions"][0]["class"] for r in results] == ["blue", "green", "red"]
    for r in results:
        probs = [p["prob"] for p in r["predictions"]]
        assert len(probs) == 2 and probs[0] >= probs[1] and 0 < sum(probs) <= 1 + 1e-6


def test_predict_probabilities_are_the_softmax_of_the_model(pkg, images):
    (r,) = predict(pkg, [images / "a" / "r.png"], top_k=3, progress=False, trust=True)
    x = (torch.tensor(COLOURS["red"], dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 8, 8) / 255 - 0.5) / 0.5
    want = graftkit.load(pkg, trust=True)(x).detach().softmax(1)[0]
    got = {p["index"]: p["prob"] for p in r["predictions"]}
    assert got == pytest.approx({i: float(want[i]) for i in range(3)}, abs=1e-5)


def test_cli_predict_json(capsys, pkg, images):
    code, out, err = run_cli(capsys, "predict", pkg, images / "b.bmp", "--top-k", "1", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["predictions"][0]["class"] == "blue"


@pytest.mark.parametrize("args, message", [
    (["predict", "no_such_model_xyz", "x.png"], "model 'no_such_model_xyz' is not understood"),
    (["predict", "{pkg}", "{missing}"], "no such file, folder or http(s) URL"),
    (["predict", "{pkg}", "{text}"], "not an image"),
    (["evaluate", "{pkg}", "{missing}"], "missing.png: not a folder"),
])
def test_bad_inputs_give_one_line_and_exit_2(capsys, pkg, images, tmp_path, args, message):
    fill = {"pkg": pkg, "missing": tmp_path / "missing.png", "text": images / "a" / "notes.txt"}
    code, _, err = run_cli(capsys, *[a.format(**fill) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft: error:") and message in lines[0], err


def test_real_process_exit_status_and_single_line(graft, pkg, tmp_path):
    r = graft("evaluate", pkg, tmp_path / "nowhere", "--trust")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "nowhere: not a folder, .lst, .csv or RecordIO pack" in r.stderr


# ---------------------------------------------------------------- export

@pytest.mark.parametrize("outputs", ["tensor", "dict", "tuple"])
def test_onnx_export_agrees_with_pytorch_and_drops_aux_heads(tmp_path, outputs):
    import onnx
    import onnxruntime as ort
    path = make_package(tmp_path, outputs)
    info = export_onnx(path, tmp_path / "m.onnx", dynamic_batch=True, trust=True)
    assert info["max_rel_err"] < 1e-5
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["graftkit"])
    assert meta["classes"] == MODEL_CLASSES and meta["preprocessing"]["input_size"] == [3, 8, 8]
    x = torch.randn(5, 3, 8, 8)
    (got,) = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})
    model = graftkit.load(path, trust=True)
    raw = model(x)
    main = {"tensor": lambda o: o, "dict": lambda o: o["loss3/classifier"], "tuple": lambda o: o[0]}[outputs](raw)
    assert got.shape == (5, 3)
    assert np.abs(got - main.detach().numpy()).max() < 1e-5


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated in favour of torch.export
def test_torchscript_export_agrees_with_pytorch(tmp_path):
    path = make_package(tmp_path, "dict")
    info = export_torchscript(path, tmp_path / "m.pt", trust=True)
    assert info["max_abs_err"] < 1e-6
    extra = {"graftkit.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["graftkit.json"])["classes"] == MODEL_CLASSES
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(loaded(x), graftkit.load(path, trust=True)(x)["loss3/classifier"], atol=1e-6)


def test_onnx_batch_is_dynamic_by_default_and_fixed_with_static_batch(tmp_path, capsys):
    import onnxruntime as ort
    path = make_package(tmp_path)
    model = graftkit.load(path, trust=True)
    code, out, err = run_cli(capsys, "export", path, "--onnx", tmp_path / "d.onnx", "--json")
    assert code == 0, err
    (done,) = json.loads(out)
    assert done["dynamic_batch"] is True and done["checked_batches"] == [1, 3]
    session = ort.InferenceSession(str(tmp_path / "d.onnx"))
    for n in (1, 3):
        x = torch.randn(n, 3, 8, 8)
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == (n, 3) and np.abs(got - model(x).detach().numpy()).max() < 1e-5
    code, out, err = run_cli(capsys, "export", path, "--onnx", tmp_path / "s.onnx", "--static-batch", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["dynamic_batch"] is False
    assert ort.InferenceSession(str(tmp_path / "s.onnx")).get_inputs()[0].shape == [1, 3, 8, 8]


def test_export_of_a_real_architecture(tmp_path, capsys):
    # EfficientNet-Lite0 (depthwise convolutions, BatchNorm, ReLU6) at a small input to stay fast
    net = graftkit.nets.spec.build("timm:efficientnet_lite0?num_classes=4").eval()
    pkg = graftkit.save(net, tmp_path / "lite.safetensors", spec="timm:efficientnet_lite0?num_classes=4",
                        classes=list("abcd"), preprocessing={**PREP, "input_size": [3, 64, 64]})
    code, out, err = run_cli(capsys, "export", pkg, "--onnx", tmp_path / "lite.onnx", "--opset", "17",
                             "--dynamic-batch", "--json")
    assert code == 0, err
    (done,) = json.loads(out)
    assert done["format"] == "onnx" and done["max_rel_err"] < 1e-4 and done["input_shape"] == [3, 3, 64, 64]
    assert (tmp_path / "lite.onnx").stat().st_size > 1e6


def test_failed_check_leaves_no_file(tmp_path, monkeypatch):
    import importlib
    ex = importlib.import_module("graftkit.serve.export")  # the package's `export` is the function
    monkeypatch.setattr(ex, "RTOL", -1.0)  # nothing can pass: the file must not appear
    path = make_package(tmp_path)
    with pytest.raises(GraftError, match="disagrees with PyTorch"):
        export_onnx(path, tmp_path / "m.onnx", trust=True)
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob(".m.onnx*"))


def test_unsupported_operator_is_one_error_and_no_file(tmp_path, capsys):
    (tmp_path / "colournet.py").write_text(NET_SOURCE)
    spec = f"{tmp_path / 'colournet.py'}:make_svd"
    path = graftkit.save(graftkit.nets.spec.build(spec, trust=True), tmp_path / "svd.safetensors", spec=spec,
                         classes=MODEL_CLASSES, preprocessing={**PREP, "input_size": [3, 3, 3]})
    code, _, err = run_cli(capsys, "export", path, "--onnx", tmp_path / "svd.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "ONNX export at opset 17 failed" in err and "linalg_svdvals" in err
    assert list(tmp_path.glob("*.onnx*")) == []
