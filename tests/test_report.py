"""The HTML report: a real short run on the built-in demo data, rendered in headless Chromium;
calibration carried into predict and ONNX; Grad-CAM on timm, torchvision and a converted Caffe net;
the audit finding planted duplicates and label errors."""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import fixture, run_graft

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PER_CLASS = {"train": 20, "val": 10, "test": 10}


def _subset(folder: Path, split: str, out: Path, n: int, extra: list[str] = ()) -> Path:
    """A .lst of the first n images per class of a demo split (labels from the folder order)."""
    classes = sorted(p.name for p in (folder / split).iterdir())
    lines, k = [], 0
    for c, name in enumerate(classes):
        for f in sorted((folder / split / name).glob("*.png"))[:n]:
            lines.append(f"{k}\t{c}\t{f.relative_to(out.parent)}")
            k += 1
    for e in extra:
        lines.append(f"{k}\t{e}")
        k += 1
    from graftkit.data.lists import save_classes
    out.write_text("\n".join(lines) + "\n")
    save_classes(out.with_suffix(".classes.json"), classes, root=out.parent)
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`graft train` (2 short epochs at 64 px) on a subset of the demo data; its report is written."""
    from graftkit.data import write_demo_set
    root = tmp_path_factory.mktemp("report")
    write_demo_set(root / "demo")
    lists = {s: _subset(root / "demo", s, root / f"{s}.lst", n) for s, n in PER_CLASS.items()}
    env = {**os.environ, "GRAFTKIT_CACHE": str(root / "cache")}
    # the light augmentation these checks were tuned with (auto would pick `small` for 28 px images): two epochs
    # learn features in which the audit's threshold finds the upscaled JPEG copy
    (root / "plan.yaml").write_text("data: {augment: light}\n")
    r = run_graft("train", "--model", "lite0", "--strategy", "finetune", "--epochs", "2", "--size", "64",
                  "--plan", root / "plan.yaml",
                  "--train", lists["train"], "--val", lists["val"], "-o", root / "run", env=env)
    assert r.returncode == 0, r.stderr
    assert f"report: {root / 'run' / 'report.html'}" in " ".join(r.stderr.split())
    return root, lists, env


def test_train_writes_a_report_with_every_section_and_json(demo_run):
    root, _, _ = demo_run
    page = (root / "run" / "report.html").read_text()
    for section in ("summary", "curves", "errors", "calibration", "audit"):
        assert f"<section id={section}>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # offline, JS off
    doc = json.loads((root / "run" / "report.json").read_text())
    assert doc["metrics"]["n"] == 100 and len(doc["per_class"]) == 10 and len(doc["gallery"]) == 12
    c = doc["calibration"]
    assert c["ece_before"] >= 0 and (c["nll_after"] <= c["nll_before"] + 1e-9 if c["applied"] else c["why"])
    audit = json.loads((root / "run" / "audit.json").read_text())
    assert set(audit["splits"]) == {"train", "val"} and audit["label_issues"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); CI installs it")
def test_the_report_renders_in_headless_chromium_with_every_image_loaded(demo_run, tmp_path):
    root, lists, env = demo_run
    r = run_graft("report", root / "run", "--data", lists["test"], "-o", tmp_path / "page" / "report.html", env=env)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "page" / "report.html").read_text()
    # A copy with a probe script: after load it records what the browser saw into the DOM.
    probe = page.replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-check', JSON.stringify({
    images: imgs.length, broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
    requests: performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith('data:'))}));
});</script></body>""")
    (tmp_path / "probe.html").write_text(probe)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
             "--virtual-time-budget=20000"]
    dom = subprocess.run([*flags, "--dump-dom", (tmp_path / "probe.html").as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    import html as html_lib
    import re
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, dom[:500]
    seen = json.loads(html_lib.unescape(found.group(1)))
    assert seen["sections"] == ["summary", "curves", "errors", "calibration", "audit"]
    assert seen["images"] >= 2 * 12 + 4 and seen["broken"] == [] and seen["requests"] == [], seen
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,3000", "--hide-scrollbars",
                    (tmp_path / "page" / "report.html").as_uri()], capture_output=True, timeout=120)
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (3000, 1280) and pixels.std() > 20  # a page was drawn, not a blank


def test_predict_and_onnx_give_the_reports_calibrated_probabilities(demo_run, tmp_path):
    import onnxruntime as ort
    import graftkit
    from graftkit.data.decode import decode
    from graftkit.data.transforms import eval_pipeline
    root, lists, env = demo_run
    package = root / "run" / "best.safetensors"
    from graftkit.package import update_meta
    if not graftkit.read_meta(package).get("calibration"):  # the short run came out calibrated: give it one
        update_meta(package, calibration={"temperature": 1.7})
    t = graftkit.read_meta(package)["calibration"]["temperature"]
    assert t != 1.0
    image = str(root / lists["test"].read_text().split("\n")[0].split("\t")[2])
    r = run_graft("predict", package, image, "--json", "-k", "10", env=env)
    assert r.returncode == 0, r.stderr
    got = {p["class"]: p["prob"] for p in json.loads(r.stdout)[0]["predictions"]}
    net = graftkit.load(package)
    x = eval_pipeline(net.graftkit_meta["preprocessing"])(torch.from_numpy(decode(image).copy()).permute(2, 0, 1))[None]
    with torch.no_grad():
        want = (net(x) / t).softmax(1)[0]
    classes = net.graftkit_meta["classes"]
    assert max(abs(got[c] - float(want[i])) for i, c in enumerate(classes)) < 1e-5
    r = run_graft("export", package, "--onnx", tmp_path / "m.onnx", env=env)
    assert r.returncode == 0, r.stderr
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    onnx_probs = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]).softmax(1)[0]
    assert torch.allclose(onnx_probs, want, atol=1e-5)


def test_evaluate_writes_the_report_and_the_audit_finds_planted_leaks(demo_run, tmp_path):
    """Test images copied into the data (one re-encoded as JPEG and upscaled): flagged as duplicates."""
    from PIL import Image
    root, lists, env = demo_run
    rows = [line.split("\t") for line in lists["test"].read_text().splitlines()]
    (root / "copies").mkdir()
    copies = []
    for n, row in enumerate(rows[:4]):
        img = Image.open(root / row[2])
        target = root / "copies" / f"copy{n}.{'jpg' if n % 2 else 'png'}"
        if n % 2:
            img.resize((56, 56), Image.BILINEAR).convert("RGB").save(target, quality=90)
        else:
            shutil.copy(root / row[2], target)
        copies.append(f"{row[1]}\t{target.relative_to(root)}")
    data = _subset(root / "demo", "test", root / "test_plus.lst", PER_CLASS["test"], copies)
    r = run_graft("evaluate", root / "run" / "best.safetensors", data, "-o", tmp_path / "eval", env=env)
    assert r.returncode == 0, r.stderr
    audit = json.loads((tmp_path / "eval" / "audit.json").read_text())
    pairs = audit["duplicates"]["exact"] + audit["duplicates"]["near"]
    found = {p["b_name"] if "copy" in p["b_name"] else p["a_name"] for p in pairs}
    assert {Path(c.split("\t")[1]).name for c in copies} <= {Path(f).name for f in found}, pairs
    assert len(pairs) == 4, pairs  # and nothing else in the untouched images
    assert (tmp_path / "eval" / "report.html").is_file() and (tmp_path / "eval" / "metrics.json").is_file()


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18", "caffe:googlenet"])
def test_grad_cam_finds_the_last_stage_of_any_network(spec):
    from graftkit.report.gradcam import cam_layer, grad_cam
    torch.manual_seed(0)
    if spec == "caffe:googlenet":
        from graftkit.nets import caffe
        net = caffe.convert([fixture("caffe/googlenet.deploy.prototxt")])
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p) * 0.05)
    else:
        import graftkit
        net = graftkit.resolve(spec)
    from graftkit.serve.inference import MainOutput as graftkit_main
    net.eval()
    x = torch.randn(2, 3, 224, 224)
    layer = cam_layer(net, (3, 224, 224))
    with torch.no_grad():
        predicted = graftkit_main(net)(x).argmax(1)   # the report explains the predicted class
    cams = grad_cam(net, x, predicted, layer)
    assert cams.shape == (2, 224, 224) and float(cams.max()) == pytest.approx(1.0)
    assert all(float(c.std()) > 0.01 for c in cams), layer
    assert layer in {"timm:resnet18": ["layer4"], "torchvision:resnet18": ["layer4"]}.get(spec, [layer])
