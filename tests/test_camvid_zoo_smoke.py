"""Smoke test of `benchmarks.camvid_zoo` (issue 19) on a tiny fake CamVid folder."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import camvid_zoo


def _fake_camvid(root, train=4, val=2, size=(40, 56)):
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(count):
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            labels = rng.integers(0, 12, size, dtype=np.uint8)  # 11 classes + void 11
            Image.fromarray(image).save(root / split / f"f{i}.png")
            Image.fromarray(labels, mode="L").save(root / f"{split}annot" / f"f{i}.png")
    return root


def test_two_rows_train_score_and_report(tmp_path, monkeypatch):
    """Default precision `auto` on an AMX CPU: the light DeepLabV3 head trains in float32, the
    plain-convolution SegNet-Basic in bfloat16; both are scored in float32."""
    import keras_deeplab.precision

    amx = (frozenset({"amx_bf16", "amx_tile"}), ())
    monkeypatch.setattr(keras_deeplab.precision, "_hardware", lambda: amx)
    data = _fake_camvid(tmp_path / "camvid_fake")
    stem = tmp_path / "results" / "zoo"
    camvid_zoo.main(
        [
            "--models", "deeplabv3_scratch,segnet_basic",
            "--steps", "2", "--batch-size", "2", "--crop-size", "33",
            "--latency-size", "33,49", "--latency-runs", "1", "--no-tflite",
            "--data", str(data), "--out", str(tmp_path / "runs"), "--results", str(stem),
        ]
    )  # fmt: skip
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["kind"] == "custom run"
    assert [r["key"] for r in record["rows"]] == ["deeplabv3_scratch", "segnet_basic"]
    assert [r["train_precision"] for r in record["rows"]] == ["float32", "bfloat16"]
    assert "multiply-adds) have no AMX kernel" in record["rows"][0]["precision_choice"]
    for row in record["rows"]:
        assert 0 <= row["miou"] <= 1 and 0 <= row["global_accuracy"] <= 1
        assert len(row["per_class_iou"]) == 11
        assert row["steps"] == 2 and row["params"] > 0 and row["macs"] > 0
        assert row["keras_ms"] > 0 and row["tflite_ms"] is None
    assert record["rows"][0]["keras_ms_ratio"] == 1.0
    table = stem.with_suffix(".md").read_text()
    assert "| deeplabv3_scratch | scratch | 8 |" in table and "segnet_basic" in table
    assert stem.with_suffix(".png").stat().st_size > 0
    assert (tmp_path / "results" / "zoo_panels.png").stat().st_size > 0
    # The run directory is what `keras-deeplab eval --run` loads.
    from keras_deeplab.training.run_dir import load_run

    loaded = load_run(tmp_path / "runs" / "segnet_basic")
    assert loaded.model.num_classes == 11
    assert loaded.model.dtype_policy.name == "float32"  # what was scored


@pytest.mark.slow  # 22 s on the AMD host; test_two_rows_train_score_and_report is the CI smoke
def test_a_row_of_other_settings_is_retrained_not_restored(tmp_path, capsys):
    """The trainer resumes any checkpoint in its directory: a finished row of another recipe
    must not be 'trained' by restoring its final step."""
    data = _fake_camvid(tmp_path / "camvid_fake")
    args = [
        "--models", "segnet_basic", "--steps", "2", "--batch-size", "2", "--crop-size", "33",
        "--latency-size", "33,49", "--latency-runs", "1", "--no-tflite", "--precision", "float32",
        "--eval-limit", "1", "--data", str(data), "--out", str(tmp_path / "runs"),
        "--results", str(tmp_path / "zoo"),
    ]  # fmt: skip
    camvid_zoo.main(args)
    camvid_zoo.main(args)
    assert "reused" in capsys.readouterr().out
    camvid_zoo.main([*args, "--min-scale", "1.0", "--max-scale", "1.0"])
    out = capsys.readouterr().out
    assert "holds a run of other settings; training afresh" in out
    row = json.loads((tmp_path / "zoo.json").read_text())["rows"][0]
    assert row["steps"] == 2 and row["resumed_from"] is None  # trained, not restored
    assert (
        row["fingerprint"]
        == (tmp_path / "runs" / "segnet_basic" / "zoo_fingerprint.txt").read_text().strip()
    )


def test_unknown_model_lists_the_valid_rows():
    with pytest.raises(SystemExit, match="unknown row.*nope.*valid rows: deeplabv3, "):
        camvid_zoo.main(["--models", "deeplabv3,nope"])


def test_missing_data_says_where_it_is_expected(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DEEPLAB_SHARED_DATA", str(tmp_path))
    with pytest.raises(SystemExit) as error:
        camvid_zoo.main(["--models", "segnet_basic"])
    message = str(error.value)
    assert str(tmp_path / "camvid_full") in message and "KERAS_DEEPLAB_SHARED_DATA" in message


def test_unfold_batch_norm_keeps_the_function_and_takes_the_statistics():
    """Folded BatchNorms (Google's file: gamma 1, mean 0, var 1 - eps) get their inputs'
    statistics and the model computes the same logits in inference mode."""
    import keras_deeplab
    from keras_deeplab.training.batchnorm import batch_norm_layers

    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    rng = np.random.default_rng(1)
    norms = batch_norm_layers(model)
    for bn in norms:  # the state load_tflite leaves
        channels = bn.beta.shape[0]
        bn.gamma.assign(np.ones(channels, "float32"))
        bn.beta.assign(rng.normal(0, 0.1, channels).astype("float32"))
        bn.moving_mean.assign(np.zeros(channels, "float32"))
        bn.moving_variance.assign(np.full(channels, 1 - bn.epsilon, "float32"))
    untouched = norms[-1]
    untouched.moving_mean.assign(np.full(untouched.beta.shape[0], 0.5, "float32"))  # not folded
    images = [rng.uniform(0, 255, (33, 41, 3)).astype("float32") for _ in range(3)]
    before = np.asarray(model(np.stack(images), training=False))
    changed = camvid_zoo.unfold_batch_norm(model, images, batch=2)
    after = np.asarray(model(np.stack(images), training=False))
    assert changed == len(norms) - 1
    np.testing.assert_allclose(after, before, atol=1e-3 * max(1.0, np.abs(before).max()))
    first = norms[0]
    variance = np.asarray(first.moving_variance)
    assert variance.min() >= 0 and not np.allclose(variance, 1 - first.epsilon)
    np.testing.assert_allclose(first.gamma, np.sqrt(variance + first.epsilon), rtol=1e-5)
    assert np.allclose(np.asarray(untouched.moving_mean), 0.5)


def test_pareto_labels_of_coincident_points_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.camvid_zoo_report import _label_offsets

    keys = ["fcn_head", "deeplabv3", "pspnet"] + [f"row_{i}" for i in range(16)]
    rows = [{"key": k, "tflite_ms": 20.0, "miou": 0.42} for k in keys]
    fig, ax = plt.subplots()
    ax.scatter([10.0, 100.0], [0.1, 0.6])
    ax.set_xscale("log")
    offsets = _label_offsets(ax, rows, "tflite_ms")
    plt.close(fig)
    # The same point: every label gets its own place (a line of its own or the other side).
    assert len(set(offsets)) == len(rows)
    assert offsets[0] == (4.0, 3.0)


def test_quick_rows_take_the_narrow_heads_and_the_default_rows_the_full_run_widths():
    quick = {row.key: row for row in camvid_zoo.parse_rows(None, quick=True)}
    default = {row.key: row for row in camvid_zoo.parse_rows(None, quick=False)}
    assert (
        quick["refinenet"].options["width"] == 64 and "quick: width=64" in quick["refinenet"].note
    )
    assert quick["upernet"].options["fpn_dim"] == 128
    assert default["refinenet"].options["width"] == camvid_zoo.ZOO_REFINENET_WIDTH == 128
    assert "fpn_dim" not in default["upernet"].options
    assert "refinenet_scratch" not in quick and "refinenet_scratch" in default
    # --quick: the heads on Google's trunk; the whole-graph scratch networks in the full run.
    assert sorted(quick) == sorted(r.key for r in camvid_zoo.ROWS if r.init.startswith("google"))
    assert {"segnet_basic", "unet_same"} <= set(default)
    named = camvid_zoo.parse_rows("refinenet_scratch", quick=True)
    assert named[0].options["width"] == 64
    with pytest.raises(SystemExit, match="unknown row.*valid rows"):
        camvid_zoo.parse_rows("refinenet,bogus", quick=False)
