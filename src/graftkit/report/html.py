"""The report as one self-contained HTML page: inline CSS, every picture embedded as a data URI,
no script and no network access, so it reads the same offline, with JavaScript off, or mailed."""
from __future__ import annotations

import base64
import html
from typing import Any

from . import figures

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:34px 0 10px;border-bottom:2px solid #dde1e8;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}
.sub{color:#5b6475;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:22px} .card span{color:#5b6475;font-size:13px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:14px}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top} td.n{text-align:right}
th{background:#eef1f5}
img.fig{max-width:100%;background:#fff;border:1px solid #dde1e8;border-radius:6px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:8px;width:336px}
figure img{width:160px;height:auto;border-radius:4px} figcaption{font-size:13px;margin-top:4px}
figure.small{width:auto;padding:6px} figure.small img{width:96px}
.bad{color:#b42318} .ok{color:#067647} .note{color:#5b6475;font-size:13px}
nav a{margin-right:14px}
"""


def render(doc: dict[str, Any]) -> str:
    s = doc.get("summary") or {}
    title = ("Run report: " + str(s.get("model") or s.get("spec") or "")) if doc["kind"] == "run" \
        else "Evaluation report: " + str(s.get("spec") or "")
    sections = [_summary(doc), _curves(doc), _errors(doc), _calibration(doc), _audit(doc)]
    nav = " ".join(f'<a href="#{i}">{t}</a>' for i, t in (("summary", "Summary"), ("curves", "Curves"),
                                                          ("errors", "Errors"), ("calibration", "Calibration"),
                                                          ("audit", "Data audit")))
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=sub>graftkit report · made in {doc.get('seconds_report', 0):.1f} s</p>"
            f"<nav>{nav}</nav>{''.join(sections)}</main></body></html>")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(data: bytes, alt: str, kind: str = "png", cls: str = "fig") -> str:
    return f'<img class={cls} alt="{_e(alt)}" src="data:image/{kind};base64,{base64.b64encode(data).decode()}">'


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _groups(groups: list[dict]) -> str:
    """The plan by layer group (what trained, at which learning rate and weight decay), if the run has one."""
    if not groups:
        return ""
    return "<h3>Plan by layer group</h3>" + _table(
        ["group", "parameters", "status", "learning rate", "weight decay"],
        [[g["group"], f"{g['parameters']:,}", ", ".join(g["status"]), ", ".join(f"{x:.3g}" for x in g["lr"]),
          ", ".join(f"{x:.3g}" for x in g["weight_decay"])] for g in groups], {1})


def _table(head: list[str] | None, rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    h = "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i in numeric else ''}>{_e(v)}</td>" for i, v in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table>{h}{body}</table>"


def _card(value: Any, label: str) -> str:
    return f"<div class=card><b>{_e(value)}</b><span>{_e(label)}</span></div>"


def _summary(doc) -> str:
    s = doc.get("summary") or {}
    m = doc.get("metrics") or {}
    cards = []
    if m:
        cards += [_card(_pct(m["top1"]), f"top-1 on {m['n']} images"), _card(_pct(m["top5"]), f"top-{m['k']}")]
    if doc["kind"] == "run":
        st = s.get("strategy") or {}
        cards += [_card(st.get("chosen") or "-", "strategy"), _card(f"{s.get('seconds') or 0:.0f} s", "training time"),
                  _card(s.get("train_images"), "training images"), _card(s.get("val_images"), "validation images")]
    cards.append(_card(f"{s.get('parameters', 0):,}", "parameters"))
    out = [f"<section id=summary><h2>Summary</h2><div class=cards>{''.join(cards)}</div>"]
    facts = [["model", s.get("model") or s.get("spec")], ["architecture", s.get("spec")], ["classes", s.get("classes")]]
    if doc["kind"] == "run":
        st = s.get("strategy") or {}
        facts += [["strategy", f"{st.get('chosen')} (asked: {st.get('asked')})"], ["scenario", st.get("scenario") or "-"],
                  ["why", st.get("why") or "-"], ["epochs", s.get("epochs")],
                  ["stopped", s.get("stop_reason")],
                  ["time budget", f"{s['time_budget']:.0f} s" if s.get("time_budget") else "none"],
                  *([["measuring before training", f"{s['seconds_measuring']:.0f} s"]] if s.get("seconds_measuring") else []),
                  ["training data", (s.get("data") or {}).get("train")], ["validation data", (s.get("data") or {}).get("val")]]
    t = s.get("transplant")
    if t:
        facts.append(["transplant", f"{t.get('copied')} copied, {t.get('adapted')} adapted, {t.get('left')} left "
                                    f"({t.get('transferred_fraction', 0):.1%} of target tensors)"])
    else:
        facts.append(["transplant", "none recorded (the weights are the model's own)"])
    out.append(_table(None, [[k, "-" if v is None else v] for k, v in facts]))
    out.append(_groups(s.get("groups") or []))
    for w in s.get("warnings") or []:
        out.append(f"<p class=bad>warning: {_e(w)}</p>")
    return "".join(out) + "</section>"


def _curves(doc) -> str:
    h = doc.get("history") or []
    if not h:
        why = "this run trained no epochs (a linear probe is fitted in one step)" if doc["kind"] == "run" \
            else "an evaluation has no training curves"
        return f"<section id=curves><h2>Curves</h2><p class=note>No curves: {why}.</p></section>"
    return f"<section id=curves><h2>Curves</h2>{_img(figures.curves(h), 'loss, accuracy and learning rate per epoch')}</section>"


def _errors(doc) -> str:
    if "metrics" not in doc:
        return "<section id=errors><h2>Errors</h2><p class=note>No data was scored.</p></section>"
    rows = [[r["class"], _pct(r["precision"]), _pct(r["recall"]), _pct(r["f1"]), r["support"]] for r in doc["per_class"]]
    out = [f"<section id=errors><h2>Errors</h2><p class=sub>on {_e(doc['data'])}</p>",
           "<h3>Per class</h3>", _table(["class", "precision", "recall", "F1", "images"], rows, {1, 2, 3, 4}),
           "<h3>Confusion matrix</h3>",
           _img(figures.confusion(doc["confusion"], doc["classes"], doc["columns"]), "confusion matrix")]
    if doc["most_confused"]:
        out += ["<h3>Most confused</h3>", _table(["true", "predicted as", "images"],
                                                  [[p["true"], p["predicted"], p["count"]] for p in doc["most_confused"]], {2})]
    g = doc.get("gallery") or []
    if g:
        out.append("<h3>Top losses, with Grad-CAM</h3><p class=note>The images the model is most wrong about; the "
                   "right picture shows where the evidence for the predicted class lies.</p><div class=gallery>")
        for item in g:
            pics = _img(figures.tile(item["image"]), item["name"], "jpeg", "")
            if item.get("cam") is not None:
                pics += " " + _img(figures.tile(item["image"], item["cam"]), "Grad-CAM of " + item["name"], "jpeg", "")
            verdict = "ok" if item["true"] == item["predicted"] else "bad"
            out.append(f"<figure>{pics}<figcaption><span class={verdict}>true {_e(item['true'])} · predicted "
                       f"{_e(item['predicted'])} ({item['p_predicted']:.2f})</span><br>"
                       f"p(true) {item['p_true']:.3f} · loss {item['loss']:.2f}<br><span class=note>{_e(item['name'])}"
                       "</span></figcaption></figure>")
        out.append("</div>")
        if g[0].get("cam_error"):
            out.append(f"<p class=note>Grad-CAM not shown: {_e(g[0]['cam_error'])}</p>")
    return "".join(out) + "</section>"


def _calibration(doc) -> str:
    c = doc.get("calibration") or {}
    out = ["<section id=calibration><h2>Calibration</h2>"]
    if "bins_before" not in c:
        return out[0] + f"<p class=note>Not measured: {_e(c.get('why', ''))}.</p></section>"
    if c.get("applied"):
        out.append(f"<p>Temperature <b>T = {c['temperature']:.3f}</b>, fitted on {_e(c.get('fitted_on'))} and stored in "
                   f"the package: <code>graft predict</code> and the exported ONNX file divide the logits by it. "
                   f"Expected calibration error on {c['n']} images: <b>{c['ece_before']:.3f}</b> before, "
                   f"<b>{c['ece_after']:.3f}</b> after.</p>")
    else:
        out.append(f"<p>Temperature scaling not applied: {_e(c.get('why'))}. ECE {c['ece_before']:.3f} on {c['n']} images.</p>")
    out.append(_img(figures.reliability(c["bins_before"], c.get("bins_after"), c["ece_before"], c.get("ece_after"),
                                        c.get("temperature")), "reliability diagram"))
    return "".join(out) + "</section>"


def _audit(doc) -> str:
    a = doc.get("audit") or {}
    out = ["<section id=audit><h2>Data audit</h2>",
           f"<p class=note>Splits: {_e(', '.join(f'{k} ({v})' for k, v in (a.get('splits') or {}).items()))}; "
           f"near-duplicate features: {_e(a.get('features') or 'none (pixels only)')}.</p>"]
    out.append("<h3>Likely label errors</h3>")
    for li in a.get("label_issues", []):
        flagged = [r for r in li["ranked"] if r["flagged"]]
        out.append(f"<p>{li['split']}: <b>{li['flagged']}</b> of {li['n']} images flagged ({_e(li['how'])}).</p>")
        shown = flagged[:20]
        if shown:
            out.append(_table(["image", "given label", "looks like", "p(given)", "p(looks like)"],
                              [[_short(r["name"]), r["given"], r["suggested"], f"{r['p_given']:.3f}",
                                f"{r['p_suggested']:.3f}"] for r in shown], {3, 4}))
            out.append(_thumbs(doc, li["split"], shown[:8]))
    if not a.get("label_issues"):
        out.append("<p class=note>Not checked: no out-of-sample probabilities for any split.</p>")
    d = a.get("duplicates") or {}
    out.append("<h3>Duplicates and leakage</h3>")
    counts = d.get("counts") or {}
    out.append(_table(["splits", "exact", "near", "kind"],
                      [[k, v["exact"], v["near"], "leakage across splits" if v["across"] else "within a split"]
                       for k, v in counts.items()], {1, 2}))
    pairs = (d.get("exact") or []) + (d.get("near") or [])
    leaks = [p for p in pairs if p["a"] != p["b"]][:20] or pairs[:20]
    if leaks:
        out.append(_table(["image", "copy", "pixel sim.", "feature sim.", "same label"],
                          [[f"{p['a']}: {_short(p['a_name'])}", f"{p['b']}: {_short(p['b_name'])}",
                            p.get("pixel_similarity", "exact"), p.get("feature_similarity", "-") or "-",
                            "yes" if p["same_label"] else "no"] for p in leaks], {2, 3}))
    out.append("<h3>Class balance</h3>")
    for name, im in (a.get("imbalance") or {}).items():
        flag = f" <span class=bad>imbalanced ({im['ratio']}x)</span>" if im["flagged"] else ""
        empty = f" <span class=bad>no images: {_e(', '.join(im['empty']))}</span>" if im["empty"] else ""
        out.append(f"<p>{_e(name)}: largest/smallest class {im['ratio']}x{flag}{empty}</p>")
    out.append("<h3>Data check</h3>")
    for name, c in (a.get("checks") or {}).items():
        if not c.get("checked"):
            out.append(f"<p class=note>{_e(name)}: not checked here: {_e(c['why'])}.</p>")
            continue
        out.append(f"<p>{_e(name)}: {c['images']} images, {c['errors']} errors, {c['warnings']} warnings.</p>")
        if c["problems"]:
            out.append(_table(["severity", "kind", "file", "problem"],
                              [[p["severity"], p["kind"], _short(p["path"] or ""), p["message"]] for p in c["problems"][:20]]))
    return "".join(out) + "</section>"


def _thumbs(doc, split: str, rows: list[dict[str, Any]]) -> str:
    """Small captioned pictures of flagged images (the audit's data sets are on the doc while rendering)."""
    ds = (doc.get("_datasets") or {}).get(split)
    if ds is None or not rows:
        return ""
    from ..data.decode import DecodeError
    tiles = []
    for r in rows:
        try:
            pic = _img(figures.tile(ds.decode(r["index"]), side=96), r["name"], "jpeg", "")
        except DecodeError:  # an undecodable image is named in the table already
            continue
        tiles.append(f"<figure class=small>{pic}<figcaption>{_e(r['given'])} → {_e(r['suggested'])}"
                     f"</figcaption></figure>")
    return f"<div class=gallery>{''.join(tiles)}</div>"


def _short(name: str, keep: int = 60) -> str:
    return name if len(name) <= keep else "…" + name[-keep + 1:]


# -- detection and segmentation runs (report.dense) -----------------------------------------------------------

def render_task(doc: dict[str, Any]) -> str:
    """The page of a dense run: summary, curves, the task metrics, predictions drawn on validation images."""
    s = doc.get("summary") or {}
    title = f"Run report: {s.get('model') or ''} {'detector' if doc['task'] == 'detect' else 'segmenter'}"
    nav = " ".join(f'<a href="#{i}">{t}</a>' for i, t in (("summary", "Summary"), ("curves", "Curves"),
                                                          ("metrics", "Metrics"), ("predictions", "Predictions")))
    sections = [_task_summary(doc), _task_curves(doc), _task_metrics(doc), _task_gallery(doc)]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=sub>graftkit report · made in {doc.get('seconds_report', 0):.1f} s</p>"
            f"<nav>{nav}</nav>{''.join(sections)}</main></body></html>")


def _num(x, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _task_summary(doc) -> str:
    s, m = doc.get("summary") or {}, doc.get("metrics") or {}
    cards = ([_card(_num(m.get("ap50")), "AP50"), _card(_num(m.get("ap")), "AP@[.50:.95]"),
              _card(_num(m.get("ap75")), "AP75")] if doc["task"] == "detect" else
             [_card(_num(m.get("miou")), "mIoU"), _card(_pct(m.get("pixel_accuracy")), "pixel accuracy")])
    cards += [_card(s.get("iterations"), "iterations"), _card(f"{s.get('seconds') or 0:.0f} s", "training time"),
              _card(s.get("train_images"), "training images"), _card(s.get("val_images"), "validation images")]
    t = s.get("transfer") or {}
    data = s.get("data") or {}
    facts = [["task", "detection (FCOS on an FPN)" if doc["task"] == "detect" else "segmentation (FPN head)"],
             ["backbone", f"{s.get('model')} ({'pretrained' if s.get('pretrained') else 'random initialisation'})"],
             ["classes", ", ".join(s.get("classes") or [])], ["input size", s.get("size")], ["seed", s.get("seed")],
             ["epochs", s.get("epochs")], ["stopped", s.get("stop_reason")],
             ["time budget", f"{doc['time_budget']:.0f} s" if doc.get("time_budget") else "none"],
             ["training data", data.get("train")], ["validation data", data.get("val")],
             ["metrics on", doc.get("data") or "-"],
             ["transfer", f"{t.get('backbone_tensors')} backbone tensors from {s.get('model')}, {t.get('new_tensors')} "
                          f"new (head) tensors" if t else "-"]]
    out = [f"<section id=summary><h2>Summary</h2><div class=cards>{''.join(cards)}</div>",
           _table(None, [[k, "-" if v is None else v] for k, v in facts])]
    out.append(_groups(s.get("groups") or []))
    return "".join(out) + "</section>"


def _task_curves(doc) -> str:
    h = doc.get("history") or []
    if not h:
        return "<section id=curves><h2>Curves</h2><p class=note>No curves: the run has no log.csv.</p></section>"
    if doc["task"] == "detect":
        pic = figures.curves(h, {"validation AP50": "val_ap50", "validation AP": "val_ap", "validation AP75": "val_ap75"},
                             "COCO AP")
    else:
        pic = figures.curves(h, {"validation mIoU": "val_miou", "validation pixel accuracy": "val_pixel_accuracy"},
                             "mIoU")
    return f"<section id=curves><h2>Curves</h2>{_img(pic, 'loss, learning rate and validation metric per epoch')}</section>"


def _task_metrics(doc) -> str:
    m = doc.get("metrics")
    if not m:
        return "<section id=metrics><h2>Metrics</h2><p class=note>No validation data: nothing was scored.</p></section>"
    out = [f"<section id=metrics><h2>Metrics</h2><p class=sub>on {_e(doc.get('data'))}</p>"]
    if doc["task"] == "detect":
        out.append(f"<p>AP@[.50:.95] <b>{_num(m.get('ap'))}</b>, AP50 <b>{_num(m.get('ap50'))}</b>, AP75 "
                   f"<b>{_num(m.get('ap75'))}</b> over {m.get('detections', 0)} detections.</p>")
        out.append("<h3>Per class (AP@[.50:.95])</h3>" + _table(
            ["class", "AP"], [[c, _num(v)] for c, v in (m.get("per_class") or {}).items()], {1}))
    else:
        out.append(f"<p>mIoU <b>{_num(m.get('miou'))}</b>, pixel accuracy <b>{_pct(m.get('pixel_accuracy'))}</b>; "
                   f"pixels labelled {m.get('ignore_index', 255)} (ignore) are left out.</p>")
        out.append("<h3>Per class IoU</h3>" + _table(
            ["class", "IoU"], [[c, "- (absent)" if v is None else f"{v:.3f}"] for c, v in (m.get("iou") or {}).items()],
            {1}))
    if m.get("reduction"):
        out.append(f"<p class=note>Reduction: {_e(m['reduction'])}.</p>")
    return "".join(out) + "</section>"


def _task_gallery(doc) -> str:
    g = doc.get("gallery") or []
    if not g:
        return "<section id=predictions><h2>Predictions</h2><p class=note>No images to draw on.</p></section>"
    figs = "".join(f'<figure><img style="width:100%" alt="{_e(x["name"])}" src="data:image/png;base64,{x["png"]}">'
                   f"<figcaption>{_e(x['name'])}: {_e(x['what'])}</figcaption></figure>" for x in g)
    return (f"<section id=predictions><h2>Predictions</h2><p class=note>The model's "
            f"{'boxes (score ≥ 0.3)' if doc['task'] == 'detect' else 'class masks'} on the first validation images, "
            f"as <code>graft predict -o</code> draws them.</p><div class=gallery>{figs}</div></section>")
