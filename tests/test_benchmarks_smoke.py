"""Smoke test of `python -m benchmarks.run`'s building blocks at tiny sizes.

Nothing here checks a speed: only that every measurement produces finite numbers and that
the report renders with the expected columns.
"""

import math

import pytest

from benchmarks import plan, workers
from benchmarks._common import measure, report_header, shared_data_dir, voc_samples
from benchmarks.backends import calibration_images
from benchmarks.crf import bench_crf
from benchmarks.inference import bench_inference, scaling_exponents
from benchmarks.machine import machine_info, matmul_peak
from benchmarks.report import fused_bn_speedups, peer_rows, render_markdown, render_summary
from benchmarks.training import bench_train

SMALL = {"measure_budget_s": 0.0, "min_reps": 1, "max_reps": 1, "cell_budget_s": 1e9}


def _finite_positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_measure_counts_reps_and_warmup():
    calls = []
    stats = measure(lambda: calls.append(1), min_reps=3, max_reps=3, budget_s=0.0)
    assert len(calls) == 4 and stats["samples"] == 3  # one warm-up + three timed
    assert set(stats) == {"median_ms", "min_ms", "samples", "warmup_ms"}


def test_scaling_exponent_of_a_power_law():
    cells = [
        {"backend": "keras", "size": s, "batch": 1, "median_ms": 3.0 * (s * s) ** 0.9}
        for s in (33, 65, 129)
    ]
    macs = {str(s): 7 * s * s for s in (33, 65, 129)}
    out = scaling_exponents(cells, macs)
    assert out["keras"] == pytest.approx(0.9) and out["macs"] == pytest.approx(1.0)


@pytest.mark.slow  # 45-55 s on 2 cores: keeps the default suite under 15 min in CI
def test_quick_path_core_functions_and_report():
    peak = matmul_peak(n=256, reps=2)
    assert _finite_positive(peak["gflops"])
    backends = ["keras", "keras_opt", "saved_model_opt", "tflite_fp32"]
    inference = bench_inference(
        "deeplabv3_mobilenetv2_dm05", [33, 65], backends, batches=(1, 2), limits=SMALL
    )
    measured = [c for c in inference["cells"] if "median_ms" in c]
    assert {(c["backend"], c["size"], c["batch"]) for c in measured} == {
        (b, s, n) for b in backends for s in (33, 65) for n in (1, 2)
    }
    for c in measured:
        assert _finite_positive(c["median_ms"]) and _finite_positive(c["gflops"])
    assert set(inference["accuracy"]) == {"keras_opt", "saved_model_opt", "tflite_fp32"}
    assert inference["accuracy"]["keras_opt"]["max_abs_diff"] < 1e-4
    assert inference["accuracy"]["tflite_fp32"]["argmax_agreement"] >= 0.95
    assert set(inference["scaling"]) >= {"keras", "macs"}
    train = bench_train("deeplabv3_mobilenetv2_dm05", crop=33, batch=2, steps=1)
    assert _finite_positive(train["images_per_s"]) and train["precision"] == "float32"
    bf16 = bench_train(
        "deeplabv3_mobilenetv2_dm05", crop=33, batch=2, steps=1, precision="bfloat16"
    )
    assert _finite_positive(bf16["images_per_s"]) and bf16["precision"] == "bfloat16"
    crf = bench_crf(size=33, images=2, processes=1)
    assert _finite_positive(crf["serial_s_per_image"])
    assert _finite_positive(crf["parallel_s_per_image"])

    report = {
        "command": "python -m benchmarks.run --quick",
        "machine": machine_info(),
        "wall_minutes": 0.1,
        "peak": {"start": peak, "end": peak, "gflops": peak["gflops"]},
        "inference": [inference, {"model": "broken", "error": "exit 1: boom"}],
        "training": [{"model": "deeplabv3_mobilenetv2_dm05", **train, "peak_rss_mb": 1.0}],
        "pipeline": {"error": "no data"},
        "crf": {**crf, "peak_rss_mb": 1.0},
        "peers": {"error": "venv missing"},
    }
    markdown = render_markdown(report)
    header = (
        "| model | px | GFLOP/img | backend | b1 ms | b1 GFLOP/s | b1 % peak | b8 img/s "
        "| b8 GFLOP/s | b8 % peak |"
    )
    assert header in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| deeplabv3_mobilenet")]
    for label in ("Keras tf.function", "Keras optimised", "TFLite fp32", "SavedModel optimised"):
        assert any(r.startswith("| deeplabv3_mobilenetv2_dm05 | 65 |") and label in r for r in rows)
    assert "error: exit 1: boom" in markdown and "keras-hub: **not measured**" in markdown
    assert "### Cost growth" in markdown and "dense CRF" in markdown
    assert all("nan" not in row for row in rows)
    summary = render_summary(report)
    assert "| deeplabv3_mobilenetv2_dm05 | 65 |" in summary and "TFLite int8" in summary


def test_peer_rows_ratios():
    report = {
        "peak": {"gflops": 500.0},
        "peers": {
            "gflop_per_image": 60.0,
            "median_ms": 400.0,
            "gflops": 150.0,
            "macs_method": "test",
            "train": {"crop": 512, "images_per_s": 1.0, "peak_rss_mb": 10.0},
        },
        "peer_ours": {
            "gflop_per_image": 75.0,
            "cells": {"keras": {"median_ms": 250.0, "gflops": 300.0}},
        },
        "training": [{"model": plan.PEER_MODEL, "crop": 513, "images_per_s": 1.5}],
    }
    rows = peer_rows(report)
    text = "\n".join(rows)
    assert "GFLOP/s **2.00x**" in text and "latency 0.62x" in text
    assert "**1.50x**" in text
    # % peak = achieved / matmul peak (150 and 300 of 500 GFLOP/s); train columns from "train"
    hub = (
        "| keras-hub DeepLabV3ImageSegmenter (ResNet50, P2) | 60.0 | 400.0 | 150 | 30 | 1.00 | 10 |"
    )
    assert rows[2] == hub
    assert rows[3].endswith("| 75.0 | 250.0 | 300 | 60 | | |"), rows[3]


@pytest.mark.slow  # 20 s on the AMD host: keeps the default suite under 15 min in CI
def test_fused_bn_speedup_and_ablation_rows():
    training = [
        {"model": "m", "fused_bn": True, "crop": 33, "batch": 2, "images_per_s": 3.0},
        {"model": "m", "fused_bn": False, "crop": 33, "batch": 2, "images_per_s": 2.0},
        {"model": "other", "crop": 33, "batch": 2, "images_per_s": 1.0},
    ]
    assert fused_bn_speedups(training) == {"m": 1.5}
    bf16 = {"model": "m", "crop": 33, "batch": 2, "images_per_s": 9.0, "precision": "bfloat16"}
    assert fused_bn_speedups([*training, bf16]) == {"m": 1.5}  # float32 rows only
    slow = bench_train("deeplabv3_mobilenetv2_dm05", crop=33, batch=2, steps=1, fused_bn=False)
    assert slow["fused_bn"] is False and _finite_positive(slow["images_per_s"])


def test_cost_prediction_scales_each_backend_by_its_own_latency():
    b1 = {("keras", 257): 100.0, ("xla", 257): 800.0, ("keras", 513): 400.0}
    assert plan.predict_b1_ms(b1, "xla", 513) == 3200.0  # not Keras' 400
    assert plan.predict_b1_ms(b1, "keras_opt", 513) == 400.0
    assert plan.predict_b1_ms({}, "keras", 513, previous=(257, 100.0)) > 390.0
    assert plan.predict_b1_ms({}, "keras", 513) is None


def test_worker_subprocess_round_trip():
    # `run_task` starts `python -m benchmarks.run --worker TASK` and reads its tagged result.
    out = workers.run_task({"kind": "peak", "n": 64, "reps": 1}, timeout=300)
    assert "error" not in out, out
    assert _finite_positive(out["gflops"]) and out["n"] == 64
    assert _finite_positive(out["peak_rss_mb"]) and out["wall_s"] > 0
    bad = workers.run_task({"kind": "nope"}, timeout=300)
    assert bad["error"].startswith("exit 1:") and "unknown task 'nope'" in bad["error"]


def test_benchmarks_find_shared_data_like_the_tests(monkeypatch, tmp_path):
    # One lookup for tests and benchmarks: the variable wins; missing data stops the script
    # with one line naming the path and the fix (no traceback).
    (tmp_path / "camvid_segnet").mkdir()
    monkeypatch.setenv("KERAS_DEEPLAB_SHARED_DATA", str(tmp_path))
    assert shared_data_dir("camvid_segnet") == tmp_path / "camvid_segnet"
    with pytest.raises(SystemExit, match="voc2012_samples does not exist.*KERAS_DEEPLAB_SHARED"):
        voc_samples(33)
    images, source = calibration_images(33)  # int8 calibration falls back to synthetic images
    assert source == "synthetic" and len(images) == 8 and images[0].shape == (33, 33, 3)


@pytest.mark.slow  # suite time: 16 s (two Keras models timed end to end)
def test_peak_fraction_pairs_every_timing_with_a_peak(tmp_path):
    """`benchmarks.peak_fraction`: one fraction per round, each against its own peak read."""
    from benchmarks import peak_fraction

    stem = tmp_path / "pf"
    argv = ["--model", "deeplabv3_mobilenetv2", "--size", "65", "--rounds", "2", "--reps", "1"]
    report = peak_fraction.main([*argv, "--results", str(stem)])
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert _finite_positive(r["peak_gflops"]) and _finite_positive(r["median_ms"])
        expected = report["gflop_per_image"] / (r["median_ms"] / 1e3) / r["peak_gflops"]
        assert r["fraction"] == pytest.approx(expected)
        assert r["steal"] is None or 0 <= r["steal"] <= 1
    fractions = sorted(r["fraction"] for r in report["rounds"])
    assert report["summary"]["median_fraction"] == pytest.approx(sum(fractions) / 2)
    assert "Median fraction" in (tmp_path / "pf.md").read_text()
    assert "| steal |" in (tmp_path / "pf.md").read_text()
    assert (tmp_path / "pf.json").is_file()
    with pytest.raises(SystemExit):
        peak_fraction.main([*argv[:4], "--rounds", "0"])


def test_bf16_batch_norm_kernel_sweep_and_report():
    from benchmarks import bf16_batch_norm

    kernels = bf16_batch_norm.kernel_sweep([16, 24], shape=(2, 9, 9), reps=2)
    assert [r["channels"] for r in kernels["rows"]] == [16, 24]
    for r in kernels["rows"]:
        assert all(_finite_positive(r[v]) for v in bf16_batch_norm.VARIANTS)
    steps = [dict(model="segnet:33:2", float32=4.0, bf16_cast=3.0, bf16_native=2.0)]
    steps[0].update(native_over_cast=2 / 3, native_over_float32=0.5)
    machine = {"cpu": "test CPU", "cores": 2, "isa": ["avx512_bf16"], "date": "today"}
    header = report_header("benchmarks.bf16_batch_norm", ["--rounds", "1"], machine)
    text = bf16_batch_norm.render({**header, "rounds": 1, "kernels": kernels, "train_steps": steps})
    assert "| segnet:33:2 | 4 | 3 | 2 | 0.67x | 0.50x |" in text
    assert "| 24 |" in text and "flags avx512_bf16" in text
    assert "`python -m benchmarks.bf16_batch_norm --rounds 1`" in text


@pytest.mark.slow  # ~85 s: three training graphs of a DeepLab model
def test_bf16_batch_norm_benchmark_measures_every_variant(tmp_path):
    from benchmarks import bf16_batch_norm

    report = bf16_batch_norm.main(
        [
            "--channels",
            "16",
            "24",
            "--models",
            "deeplabv3_mobilenetv2_dm05_os8:33:2",
            "--rounds",
            "1",
            "--results",
            str(tmp_path / "bn"),
        ]
    )
    assert [r["channels"] for r in report["kernels"]["rows"]] == [16, 24]
    (row,) = report["train_steps"]
    for r in [*report["kernels"]["rows"], row]:
        assert all(_finite_positive(r[v]) for v in bf16_batch_norm.VARIANTS)
    text = (tmp_path / "bn.md").read_text()
    assert "| deeplabv3_mobilenetv2_dm05_os8:33:2 |" in text and "| 24 |" in text
    assert (tmp_path / "bn.json").exists()


def test_bf16_batch_norm_benchmark_rejects_a_bad_model_spec(capsys):
    from benchmarks import bf16_batch_norm

    with pytest.raises(SystemExit):
        bf16_batch_norm.main(["--models", "segnet:128"])
    assert "expected name:crop:batch" in capsys.readouterr().err


def test_cpu_replicas_report_renders_rounds_and_the_median_speedup():
    from benchmarks import cpu_replicas

    machine = {"cpu": "test CPU", "cores": 2, "isa": ["avx2"]}
    runs = [
        {"after_first_s": 30.0, "training_s": 50.0},
        {"after_first_s": 20.0, "training_s": 40.0},
    ]
    report = {
        **report_header("benchmarks.cpu_replicas", ["--rounds", "1"], machine),
        "steps": 256,
        "variants": [1, 2],
        "rounds": [runs],
        "speedup": 1.5,
    }
    text = cpu_replicas.render(report)
    assert "`python -m benchmarks.cpu_replicas --rounds 1`" in text
    assert "| 1 | 30.0 / 50.0 | 20.0 / 40.0 |" in text and "**1.50x**" in text


@pytest.mark.slow  # two training processes, about 40 s
def test_cpu_replicas_benchmark_splits_the_cpu(tmp_path, monkeypatch):
    from benchmarks import cpu_replicas

    monkeypatch.setattr(cpu_replicas, "RESULTS_DIR", tmp_path)
    tiny = ["data.options.num_examples=64", "data.options.image_size=32", "data.crop_size=33"]
    tiny += ["train.batch_size=4", "train.steps_per_epoch=4"]
    report = cpu_replicas.main(["--steps", "8", "--rounds", "1", *tiny])
    ((one, split),) = report["rounds"]
    assert (one["cpu_devices"], split["cpu_devices"]) == (1, 2)
    assert one["epochs"] == split["epochs"] == 2 and report["speedup"] > 0
    assert (tmp_path / "cpu_replicas.md").exists()
