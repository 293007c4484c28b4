"""The report of a run: `run.md` (every cell, skip reasons), `run_summary.md` (the README's
compact tables) and the keras-hub comparison rows, all rendered from the report dict that
`benchmarks.run` writes to `run.json` (so tables can be re-rendered without re-measuring)."""

import math

from benchmarks.backends import BACKEND_LABELS, BACKENDS
from benchmarks.plan import PEER_MODEL, PEER_SIZE
from keras_deeplab._cpu_steal import steal_note


def fmt(value, digits=1):
    """`value` with thousands separators and `digits` decimals; "n/a" for None, nan, inf."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def find_cell(result, backend, size, batch):
    """The cell of `result` measured (or skipped) at `(backend, size, batch)`, else None."""
    for c in result.get("cells", []):
        if (c["backend"], c["size"], c["batch"]) == (backend, size, batch):
            return c
    return None


def steal_lines(machine):
    """The hypervisor's share of the CPU time over the run (`cpu_steal_share`), when recorded."""
    share = machine.get("cpu_steal_share")
    if share is None:
        return []
    note = steal_note(share)
    return [
        f"CPU time taken by the hypervisor over the run (steal): {share:.1%}"
        + (f"; {note}." if note else ".")
    ]


def render_markdown(report):
    """`run.md`: machine, peak, every inference cell, optimisations, cost growth, the
    keras-hub peer, training / pipeline / CRF rows, from a report dict."""
    peak = report["peak"]["gflops"]
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores, {', '.join(m['isa'])}), "
        f"{m['memory_gib']} GiB; TF {m['tensorflow']}, Keras {m['keras']}, Python "
        f"{m['python']}; {m['date']}; load average at start {m['load_average_at_start'][0]:.2f}.",
        f"Command: `{report['command']}` ({report['wall_minutes']:.1f} min).",
        *steal_lines(m),
        *precision_lines(report),
        "",
        f"fp32 matmul peak (4096x4096 `tf.linalg.matmul`, same run): **{peak:,.0f} GFLOP/s** "
        f"(start {report['peak']['start']['gflops']:,.0f}, end "
        f"{report['peak'].get('end', {}).get('gflops', float('nan')):,.0f}).",
        "",
        "### Inference",
        "",
        "Latency: median ms at batch 1; throughput: images/s at batch 8 (TFLite files are "
        "batch-1: 8 invocations); GFLOP/s = 2 x MACs x images/s; % = of the matmul peak.",
        "",
        "| model | px | GFLOP/img | backend | b1 ms | b1 GFLOP/s | b1 % peak | b8 img/s "
        "| b8 GFLOP/s | b8 % peak |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in report["inference"]:
        if "error" in result:
            lines.append(
                f"| {result.get('model', '?')} | | | error: {result['error']} | | | | | | |"
            )
            continue
        for size_key, macs in result["macs"].items():
            size = int(size_key)
            gflop = 2 * macs / 1e9
            for backend in BACKENDS:
                b1, b8 = find_cell(result, backend, size, 1), find_cell(result, backend, size, 8)
                if b1 is None and b8 is None:
                    continue
                row = [result["model"], str(size), fmt(gflop), BACKEND_LABELS[backend]]
                for c, batch in ((b1, 1), (b8, 8)):
                    if c is None or "median_ms" not in c:
                        reason = "n/a" if c is None else c.get("skipped", "n/a")
                        row += [reason, "", ""]
                        continue
                    first = fmt(c["median_ms"]) if batch == 1 else fmt(c["images_per_s"], 2)
                    row += [first, fmt(c["gflops"], 0), fmt(100 * c["gflops"] / peak, 0)]
                lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Optimisations (same run, batch 1; speed-up over Keras as built)", ""]
    lines += [
        "| model | px | "
        + " | ".join(BACKEND_LABELS[b] for b in BACKENDS[1:7])
        + " | bf16 argmax agreement |"
    ]
    lines += ["|---|---:|" + "---:|" * 7]
    for result in report["inference"]:
        if "error" in result:
            continue
        for size_key in result["macs"]:
            size = int(size_key)
            base = find_cell(result, "keras", size, 1)
            if not base or "median_ms" not in base:
                continue
            row = [result["model"], str(size)]
            for backend in BACKENDS[1:7]:
                c = find_cell(result, backend, size, 1)
                ok = c is not None and "median_ms" in c
                row.append(f"{base['median_ms'] / c['median_ms']:.2f}x" if ok else "n/a")
            agreement = result.get("accuracy", {}).get("keras_opt_bf16")
            row.append(
                f"{100 * agreement['argmax_agreement']:.2f}% @{agreement['size']}"
                if agreement
                else "n/a"
            )
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Cost growth (batch 1 latency vs pixels, fitted exponent; MACs grow as 1.0)"]
    lines += ["", "| model | " + " | ".join(BACKEND_LABELS[b] for b in BACKENDS) + " |"]
    lines += ["|---|" + "---:|" * len(BACKENDS)]
    for result in report["inference"]:
        if "error" in result:
            continue
        s = result.get("scaling", {})
        lines.append(
            f"| {result['model']} | " + " | ".join(fmt(s.get(b), 2) for b in BACKENDS) + " |"
        )
    peers = report.get("peers")
    if peers is not None:
        lines += [
            "",
            f"### keras-hub DeepLabV3ImageSegmenter vs ours ({PEER_SIZE}x{PEER_SIZE})",
            "",
        ]
        if "error" in peers:
            lines.append(f"keras-hub: **not measured**: {peers['error']}")
        else:
            lines += peer_rows(report)
    lines += ["", "### Training, input pipeline, CRF", ""]
    lines += ["| what | images/s | peak RSS MB | note |", "|---|---:|---:|---|"]
    for t in report.get("training", []):
        if "error" in t:
            lines.append(f"| train {t.get('model', '?')} | n/a | | {t['error']} |")
            continue
        bn = "" if t.get("fused_bn", True) else ", Keras BatchNorm (before)"
        bn += ", mixed_bfloat16" if t.get("precision", "float32") == "bfloat16" else ""
        lines.append(
            f"| train {t['model']} crop {t['crop']} batch {t['batch']}{bn} | "
            f"{fmt(t['images_per_s'], 2)} | {fmt(t['peak_rss_mb'], 0)} | "
            f"median of {t['samples']} steps, {fmt(t['median_ms'] / 1e3, 2)} s/step |"
        )
    p = report.get("pipeline")
    if p and "error" not in p:
        fastest = max(
            (t["images_per_s"] for t in report.get("training", []) if "images_per_s" in t),
            default=float("nan"),
        )
        lines.append(
            f"| input pipeline ({p['source']}, crop {p['crop']}, batch {p['batch']}) | "
            f"{fmt(p['images_per_s'], 1)} | {fmt(p['peak_rss_mb'], 0)} | "
            f"{fmt(p['images_per_s'] / fastest, 1)}x the fastest training consumption |"
        )
    elif p:
        lines.append(f"| input pipeline | n/a | | {p['error']} |")
    c = report.get("crf")
    if c and "error" not in c:
        lines.append(
            f"| dense CRF {c['size']}x{c['size']}, {c['classes']} classes, 1 process | "
            f"{fmt(1 / c['serial_s_per_image'], 2)} | {fmt(c['peak_rss_mb'], 0)} | "
            f"{fmt(c['serial_s_per_image'], 2)} s/image |"
        )
        lines.append(
            f"| dense CRF, `batch_crf` {c['processes']} processes | "
            f"{fmt(1 / c['parallel_s_per_image'], 2)} | | "
            f"{fmt(c['parallel_s_per_image'], 2)} s/image |"
        )
    elif c:
        lines.append(f"| dense CRF | n/a | | {c['error']} |")
    speedups = fused_bn_speedups(report.get("training", []))
    if speedups:
        lines += ["", "Training step, fused BatchNorm (ours) over Keras' BatchNorm, same run:"]
        lines += [f"* {model}: **{ratio:.2f}x** images/s" for model, ratio in speedups.items()]
    return "\n".join(lines) + "\n"


def fused_bn_speedups(training):
    """`{model: fused images/s / Keras-BN images/s}` for models measured both ways."""
    rates = {}
    for t in training:
        if "images_per_s" in t and t.get("precision", "float32") == "float32":
            rates[(t["model"], t.get("fused_bn", True))] = t["images_per_s"]
    return {
        model: rates[(model, True)] / rates[(model, False)]
        for model, fused in rates
        if fused and (model, False) in rates
    }


SUMMARY_B1 = tuple(b for b in BACKENDS if b != "keras_fold")  # folding: an ablation in run.md
SUMMARY_LABELS = {
    "keras": "Keras",
    "keras_opt": "Keras opt.",
    "keras_opt_bf16": "opt. + bf16",
    "xla": "XLA",
    "saved_model": "SavedModel",
    "saved_model_opt": "SavedModel opt.",
    "tflite_fp32": "TFLite fp32",
    "tflite_int8": "TFLite int8",
}


def render_summary(report):
    """The README's compact tables: one row per model and size, one column per backend."""
    peak = report["peak"]["gflops"]

    def table(batch, backends, value):
        head = "| model | px | GFLOP | " + " | ".join(SUMMARY_LABELS[b] for b in backends) + " |"
        rows = [head, "|---|---:|---:|" + "---:|" * len(backends)]
        for result in report["inference"]:
            if "error" in result:
                continue
            for size_key, macs in result["macs"].items():
                cells = [find_cell(result, b, int(size_key), batch) for b in backends]
                if not any(c and "median_ms" in c for c in cells):
                    continue
                row = [result["model"], size_key, fmt(2 * macs / 1e9)]
                for c in cells:
                    ok = c is not None and "median_ms" in c
                    row.append(f"{value(c)} ({100 * c['gflops'] / peak:.0f}%)" if ok else "n/a")
                rows.append("| " + " | ".join(row) + " |")
        return rows

    lines = ["Batch-1 latency, ms (% of the fp32 matmul peak):", ""]
    lines += table(1, SUMMARY_B1, lambda c: fmt(c["median_ms"], 0 if c["median_ms"] >= 100 else 1))
    lines += ["", "Batch-8 throughput, images/s (% of the fp32 matmul peak):", ""]
    lines += table(
        8, SUMMARY_B1[:-1], lambda c: fmt(c["images_per_s"], 1 if c["images_per_s"] >= 10 else 2)
    )
    lines += [
        "",
        "Latency growth with pixel count, batch 1, over the measured sizes (fitted exponent):",
        "",
    ]
    lines += ["| model | " + " | ".join(SUMMARY_LABELS[b] for b in SUMMARY_B1) + " |"]
    lines += ["|---|" + "---:|" * len(SUMMARY_B1)]
    for result in report["inference"]:
        if "error" not in result:
            s = result.get("scaling", {})
            row = " | ".join(fmt(s.get(b), 2) for b in SUMMARY_B1)
            lines.append(f"| {result['model']} | {row} |")
    return "\n".join(lines) + "\n"


def precision_lines(report):
    """The native precision of the machine and the bf16 verdict on the VOC samples."""
    m, lines = report["machine"], []
    if "native_precision" in m:
        lines.append(
            f"Precision `auto` on this machine: {m['native_precision']} "
            f"({m['native_precision_reason']})."
        )
    check = report.get("precision_check")
    if check is None:
        return lines
    if "error" in check:
        lines.append(f"bf16 vs fp32 check: **not run**: {check['error']}")
        return lines
    lines.append(
        f"{check['precision']} vs float32 (`verify_precision`, {check['model']}, {check['data']}"
        f"{', cached from the previous run' if check.get('cached') else ''}): argmax agreement "
        f"**{100 * check['agreement']:.2f}%**, mIoU {check['miou']:.4f} vs "
        f"{check['miou_float32']:.4f} (difference {check['miou_difference']:+.4f})."
    )
    return lines


def peer_rows(report):
    """Rows comparing keras-hub with our DeepLabV3+ resnet50 at `PEER_SIZE`."""
    peers, peak = report["peers"], report["peak"]["gflops"]
    ours = report.get("peer_ours", {})
    hub_gflop = peers["gflop_per_image"]
    rows = [
        "| model | GFLOP/img | b1 ms | GFLOP/s | % peak | train img/s (b8) | train RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| keras-hub DeepLabV3ImageSegmenter (ResNet50, P2) | {hub_gflop:.1f} | "
        f"{fmt(peers['median_ms'])} | {fmt(peers['gflops'], 0)} | "
        f"{fmt(100 * peers['gflops'] / peak, 0)} | "
        f"{fmt(peers.get('train', {}).get('images_per_s'), 2)} | "
        f"{fmt(peers.get('train', {}).get('peak_rss_mb'), 0)} |",
    ]
    hub_bf16 = report.get("peers_bf16") or {}
    if "median_ms" in hub_bf16:
        rows.append(
            f"| keras-hub, mixed_bfloat16 | {hub_gflop:.1f} | {fmt(hub_bf16['median_ms'])} | "
            f"{fmt(hub_bf16['gflops'], 0)} | {fmt(100 * hub_bf16['gflops'] / peak, 0)} | "
            f"{fmt(hub_bf16.get('train', {}).get('images_per_s'), 2)} | "
            f"{fmt(hub_bf16.get('train', {}).get('peak_rss_mb'), 0)} |"
        )
    elif "error" in hub_bf16:
        rows.append(f"| keras-hub, mixed_bfloat16 | | n/a | | | | {hub_bf16['error'][:80]} |")
    for backend, c in ours.get("cells", {}).items():
        rows.append(
            f"| ours {PEER_MODEL}, {BACKEND_LABELS[backend]} | {ours['gflop_per_image']:.1f} | "
            f"{fmt(c['median_ms'])} | {fmt(c['gflops'], 0)} | "
            f"{fmt(100 * c['gflops'] / peak, 0)} | | |"
        )
    rows += ["", "Ratios (ours / keras-hub; targets: fp32 GFLOP/s >= 1.5x, bf16 >= 3x):", ""]
    for backend, c in ours.get("cells", {}).items():
        if backend.endswith("bf16") and "median_ms" in hub_bf16:
            rows.append(
                f"* {BACKEND_LABELS[backend]} vs keras-hub mixed_bfloat16: achieved GFLOP/s "
                f"**{c['gflops'] / hub_bf16['gflops']:.2f}x**, latency "
                f"{c['median_ms'] / hub_bf16['median_ms']:.2f}x."
            )
            continue
        rows.append(
            f"* {BACKEND_LABELS[backend]}: achieved GFLOP/s **{c['gflops'] / peers['gflops']:.2f}x**, "
            f"latency {c['median_ms'] / peers['median_ms']:.2f}x "
            f"(ours {ours['gflop_per_image']:.1f} vs keras-hub {hub_gflop:.1f} GFLOP/image)."
        )
    for precision, hub in (("float32", peers), ("bfloat16", hub_bf16)):
        ours_train = next(
            (
                t
                for t in report.get("training", [])
                if t.get("model") == PEER_MODEL
                and t.get("fused_bn", True)
                and t.get("precision", "float32") == precision
                and "images_per_s" in t
            ),
            None,
        )
        hub_train = hub.get("train", {})
        if ours_train and "images_per_s" in hub_train:
            rows.append(
                f"* training images/s in {precision}, ours ({ours_train['crop']}) / keras-hub "
                f"({hub_train['crop']}): "
                f"**{ours_train['images_per_s'] / hub_train['images_per_s']:.2f}x**."
            )
    rows.append("")
    rows.append(f"keras-hub GFLOP counted as: {peers.get('macs_method', '?')}.")
    return rows
