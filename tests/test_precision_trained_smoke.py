"""Smoke test of `benchmarks.precision_trained` (issue 17) on a tiny fake CamVid folder."""

import json

import pytest
from test_camvid_zoo_smoke import _fake_camvid

from benchmarks import precision_trained


@pytest.mark.slow  # 47 s on the AMD host (bf16 emulated); the suite must stay under 15 min
def test_trains_checks_both_precisions_and_reuses_the_run(tmp_path, capsys):
    data = _fake_camvid(tmp_path / "camvid_fake")
    stem = tmp_path / "results" / "pt"
    argv = [
        "--models", "deeplabv3_mobilenetv2_dm05", "--steps", "2", "--batch-size", "2",
        "--crop-size", "33", "--data", str(data), "--out", str(tmp_path / "runs"),
        "--results", str(stem),
    ]  # fmt: skip
    precision_trained.main(argv)
    report = json.loads(stem.with_suffix(".json").read_text())
    (row,) = report["rows"]
    assert row["model"] == "deeplabv3_mobilenetv2_dm05" and row["precision"] == "bfloat16"
    assert row["images"] == 2 and row["pixels"] == 2 * 40 * 56
    assert 0.0 <= row["agreement"] <= 1.0 and 0.0 <= row["miou_float32"] <= 1.0
    assert row["miou_difference"] == row["miou"] - row["miou_float32"]
    assert "| deeplabv3_mobilenetv2_dm05 |" in stem.with_suffix(".md").read_text()
    precision_trained.main(argv)  # the finished run is reused, not trained again
    assert "trained earlier" in capsys.readouterr().out
    precision_trained.main([*argv[:2], "--steps", "3", *argv[4:]])  # other settings: afresh
    assert "holds a run of other settings; training afresh" in capsys.readouterr().out
    run = tmp_path / "runs" / "deeplabv3_mobilenetv2_dm05"
    precision_trained.main(["--runs", str(run), "--data", str(data), "--results", str(stem)])
    report = json.loads(stem.with_suffix(".json").read_text())
    assert [r["model"] for r in report["rows"]] == [run.name]
    assert report["rows"][0]["train_seconds"] is None
    assert "trained runs loaded" in stem.with_suffix(".md").read_text()
