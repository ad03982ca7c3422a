"""Result tables: per-image records -> per-kernel and overall tables, printed and written as
Markdown, CSV and JSON.

A record is a dict {protocol, model, kernel, image, psnr, ssim}. Averages follow the published
scripts: the mean over images for each kernel, then the mean of the kernel means.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import OrderedDict
from typing import Dict, Iterable, List, Sequence

from utils.io import atomic_write_json, atomic_write_text


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan")
    if any(math.isinf(v) for v in values):
        return float("inf")
    return sum(values) / len(values)


def _ordered(values: Iterable) -> List:
    return list(OrderedDict.fromkeys(values))


def per_kernel(records: Sequence[dict], protocol: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{model: {kernel: {"psnr", "ssim", "n"}}} for one protocol, plus kernel "all" (mean of means)."""
    rows = [r for r in records if r["protocol"] == protocol]
    table: Dict[str, Dict[str, Dict[str, float]]] = OrderedDict()
    for model in _ordered(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        table[model] = OrderedDict()
        for kernel in _ordered(r["kernel"] for r in mine):
            sel = [r for r in mine if r["kernel"] == kernel]
            table[model][str(kernel)] = {"psnr": _mean(r["psnr"] for r in sel),
                                         "ssim": _mean(r["ssim"] for r in sel), "n": len(sel)}
        kernels = list(table[model].values())
        table[model]["all"] = {"psnr": _mean(k["psnr"] for k in kernels),
                               "ssim": _mean(k["ssim"] for k in kernels),
                               "n": sum(k["n"] for k in kernels)}
    return table


def summarize(records: Sequence[dict]) -> Dict[str, Dict[str, Dict[str, Dict[str, float]]]]:
    """{protocol: per_kernel(...)} for every protocol, in order of appearance."""
    return OrderedDict((p, per_kernel(records, p)) for p in _ordered(r["protocol"] for r in records))


def _fmt(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def protocol_markdown(table: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """Rows = kernels (+ average), columns = models, cells = PSNR / SSIM."""
    models = list(table)
    kernels = _ordered(k for m in models for k in table[m])
    kernels = [k for k in kernels if k != "all"] + ["all"]
    header = ["kernel"] + models
    rows = []
    for k in kernels:
        label = "**average**" if k == "all" else k
        cells = []
        for m in models:
            cell = table[m].get(k)
            cells.append("–" if cell is None else f"{_fmt(cell['psnr'], 2)} / {_fmt(cell['ssim'], 4)}")
        rows.append([label] + cells)
    return markdown_table(header, rows)


def overall_markdown(summary) -> str:
    """Rows = protocols, columns = models, cells = average PSNR / SSIM."""
    models = _ordered(m for table in summary.values() for m in table)
    rows = []
    for protocol, table in summary.items():
        cells = []
        for m in models:
            cell = table.get(m, {}).get("all")
            cells.append("–" if cell is None else f"{_fmt(cell['psnr'], 2)} / {_fmt(cell['ssim'], 4)}")
        rows.append([protocol] + cells)
    return markdown_table(["protocol (PSNR dB / SSIM)"] + models, rows)


def report_markdown(summary, title: str, notes: Sequence[str] = ()) -> str:
    parts = [f"# {title}", ""]
    parts += [f"- {n}" for n in notes]
    parts += ["", "## Overall", "", overall_markdown(summary), ""]
    for protocol, table in summary.items():
        parts += [f"## {protocol}", "", protocol_markdown(table), ""]
    return "\n".join(parts)


def records_csv(records: Sequence[dict]) -> str:
    buffer = io.StringIO()
    fields = ["protocol", "model", "kernel", "image", "psnr", "ssim"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: (f"{r[k]:.6f}" if isinstance(r.get(k), float) else r.get(k)) for k in fields})
    return buffer.getvalue()


def summary_csv(summary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["protocol", "model", "kernel", "psnr", "ssim", "n"])
    for protocol, table in summary.items():
        for model, kernels in table.items():
            for kernel, cell in kernels.items():
                writer.writerow([protocol, model, kernel, f"{cell['psnr']:.6f}", f"{cell['ssim']:.6f}", cell["n"]])
    return buffer.getvalue()


def _json_safe(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_reports(folder: str, records: Sequence[dict], title: str, notes: Sequence[str] = (),
                  extra: dict | None = None) -> Dict[str, str]:
    """Write summary.md, summary.csv, per_image.csv and results.json; returns their paths."""
    summary = summarize(records)
    paths = {"markdown": os.path.join(folder, "summary.md"), "csv": os.path.join(folder, "summary.csv"),
             "per_image_csv": os.path.join(folder, "per_image.csv"), "json": os.path.join(folder, "results.json")}
    atomic_write_text(paths["markdown"], report_markdown(summary, title, notes))
    atomic_write_text(paths["csv"], summary_csv(summary))
    atomic_write_text(paths["per_image_csv"], records_csv(records))
    payload = {"title": title, "notes": list(notes), "summary": summary, "records": list(records)}
    payload.update(extra or {})
    atomic_write_json(paths["json"], _json_safe(payload))
    return paths


def write_photo_report(folder: str, photos: Sequence[dict], title: str, notes: Sequence[str] = (),
                       extra: dict | None = None) -> Dict[str, str]:
    """Real photos have no metrics: summary.md lists each photo, its kernel and the files written for it
    (paths relative to `folder`), results.json the same rows; returns their paths."""
    labels = _ordered(label for p in photos for label in p["files"])
    rows = [[p["photo"], p["kernel"]] + [p["files"].get(label, "–") for label in labels] for p in photos]
    parts = [f"# {title}", ""] + [f"- {n}" for n in notes]
    parts += ["", markdown_table(["photo", "kernel"] + labels, rows), ""]
    paths = {"markdown": os.path.join(folder, "summary.md"), "json": os.path.join(folder, "results.json")}
    atomic_write_text(paths["markdown"], "\n".join(parts))
    payload = {"title": title, "notes": list(notes), "photos": list(photos)}
    payload.update(extra or {})
    atomic_write_json(paths["json"], _json_safe(payload))
    return paths
