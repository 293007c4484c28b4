"""The PyTorch parity harness (benchmarks/parity) without torch: converters and driver bookkeeping.

The converters are checked against convolutions computed in numpy in torch's NCHW layout; the
driver runs end to end on a fake system whose "torch side" is numpy (in a subprocess, as the real
one), so the JSON merge, the bound, the exit status and the missing-venv message are tested here.
"""

import json
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from benchmarks.parity import __main__ as parity_main
from benchmarks.parity import driver
from benchmarks.parity.convert import (
    Arrays,
    assign,
    conv_kernel,
    conv_transpose_kernel,
    copy_weights,
    dense_kernel,
    depthwise_kernel,
    depthwise_kernel_m,
)
from benchmarks.parity.reference import bound, compare, load_reference, save_reference

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ numpy NCHW references


def conv_nchw(x, w, b=None, stride=1, dilation=1, groups=1):
    """torch's Conv2d (no padding) in numpy: x (N, C, H, W), w (O, C/groups, kh, kw)."""
    n, c, h, width = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (width - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    og = o // groups
    for g in range(groups):
        xs = x[:, g * cg : (g + 1) * cg]
        ws = w[g * og : (g + 1) * og]
        for u in range(kh):
            for v in range(kw):
                patch = xs[
                    :,
                    :,
                    u * dilation : u * dilation + stride * (oh - 1) + 1 : stride,
                    v * dilation : v * dilation + stride * (ow - 1) + 1 : stride,
                ]
                out[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, u, v])
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_transpose_nchw(x, w, b, stride):
    """torch's ConvTranspose2d (padding 0) in numpy: x (N, I, H, W), w (I, O, kh, kw)."""
    n, _, h, width = x.shape
    _, o, kh, kw = w.shape
    out = np.zeros((n, o, (h - 1) * stride + kh, (width - 1) * stride + kw), np.float64)
    for u in range(kh):
        for v in range(kw):
            contrib = np.einsum("nihw,io->nohw", x, w[:, :, u, v])
            out[
                :,
                :,
                u : u + stride * (h - 1) + 1 : stride,
                v : v + stride * (width - 1) + 1 : stride,
            ] += contrib
    return out + b[None, :, None, None]


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


def keras_layer(layer, input_channels):
    """`layer` built inside a model on `(None, None, input_channels)` inputs."""
    inputs = keras.Input((None, None, input_channels))
    return keras.Model(inputs, layer(inputs)), layer


# ------------------------------------------------------------------ converters


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2)])
def test_conv_kernel_equals_numpy_nchw_conv(stride, dilation):
    x, w, b = randn(2, 3, 13, 11), randn(5, 3, 3, 2), randn(5)
    model, layer = keras_layer(
        keras.layers.Conv2D(5, (3, 2), strides=stride, dilation_rate=dilation), 3
    )
    assign(layer, [conv_kernel(w), b])
    expected = conv_nchw(x, w, b, stride=stride, dilation=dilation)
    np.testing.assert_allclose(np.asarray(model(nhwc(x))), nhwc(expected), atol=1e-5)


def test_conv_kernel_is_not_a_plain_reshape():
    """The transpose matters: reshaping (O, I, kh, kw) to (kh, kw, I, O) gives another conv."""
    x, w = randn(1, 3, 9, 9), randn(4, 3, 3, 3)
    model, layer = keras_layer(keras.layers.Conv2D(4, 3, use_bias=False), 3)
    assign(layer, [w.reshape(3, 3, 3, 4)])
    wrong = np.asarray(model(nhwc(x)))
    assert np.max(np.abs(wrong - nhwc(conv_nchw(x, w)))) > 1e-2


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_kernel_equals_numpy_grouped_conv(multiplier):
    channels = 4
    x, w, b = (
        randn(1, channels, 9, 12),
        randn(channels * multiplier, 1, 3, 3),
        randn(channels * multiplier),
    )
    model, layer = keras_layer(
        keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=multiplier), channels
    )
    kernel = depthwise_kernel(w) if multiplier == 1 else depthwise_kernel_m(w, multiplier)
    assign(layer, [kernel, b])
    expected = conv_nchw(x, w, b, stride=2, groups=channels)
    np.testing.assert_allclose(np.asarray(model(nhwc(x))), nhwc(expected), atol=1e-5)


def test_depthwise_kernel_rejects_a_grouped_weight():
    with pytest.raises(ValueError, match=r"\(C\*m, 1, kh, kw\)"):
        depthwise_kernel(randn(8, 2, 3, 3))


def test_conv_transpose_kernel_equals_numpy_transposed_conv():
    x, w, b = randn(1, 3, 5, 7), randn(3, 4, 4, 4), randn(4)  # (I, O, kh, kw)
    model, layer = keras_layer(keras.layers.Conv2DTranspose(4, 4, strides=2), 3)
    assign(layer, [conv_transpose_kernel(w), b])
    expected = conv_transpose_nchw(x, w, b, stride=2)
    np.testing.assert_allclose(np.asarray(model(nhwc(x))), nhwc(expected), atol=1e-5)


def test_dense_kernel_equals_torch_linear():
    x, w, b = randn(6, 5), randn(3, 5), randn(3)
    inputs = keras.Input((5,))
    layer = keras.layers.Dense(3)
    model = keras.Model(inputs, layer(inputs))
    assign(layer, [dense_kernel(w), b])
    np.testing.assert_allclose(np.asarray(model(x)), x @ w.T + b, atol=1e-5)


def test_rank_errors_name_the_layout():
    with pytest.raises(ValueError, match=r"Conv2d weight \(O, I, kh, kw\).*shape \(3, 3\)"):
        conv_kernel(randn(3, 3))


def bn_model(epsilon=1e-5):
    inputs = keras.Input((None, None, 4))
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(epsilon=epsilon, name="bn")(x)
    return keras.Model(inputs, x)


def bn_state():
    return {
        "conv.weight": randn(4, 4, 1, 1),
        "bn.weight": 1 + randn(4) * 0.1,
        "bn.bias": randn(4),
        "bn.running_mean": randn(4),
        "bn.running_var": 0.5 + np.abs(randn(4)),
    }


def test_copy_weights_batch_norm_matches_torch_formula():
    model, state = bn_model(), bn_state()
    assert copy_weights(model, state, {"conv": "conv", "bn": "bn"}) == 5
    x = randn(1, 4, 5, 5)
    y = conv_nchw(x, state["conv.weight"])
    c = (None, slice(None), None, None)
    expected = (y - state["bn.running_mean"][c]) / np.sqrt(state["bn.running_var"][c] + 1e-5)
    expected = expected * state["bn.weight"][c] + state["bn.bias"][c]
    np.testing.assert_allclose(np.asarray(model(nhwc(x))), nhwc(expected), atol=1e-5)


def test_batch_norm_epsilon_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"epsilon=0.001.*eps=1e-05.*epsilon=1e-05"):
        copy_weights(bn_model(epsilon=1e-3), bn_state(), {"conv": "conv", "bn": "bn"})


def test_assign_shape_mismatch_names_both_sides():
    _, layer = keras_layer(keras.layers.Conv2D(5, 3, use_bias=False, name="c"), 3)
    with pytest.raises(
        ValueError, match=r"c/kernel is \(3, 3, 3, 5\), torch x gives \(3, 3, 5, 3\)"
    ):
        assign(layer, [randn(3, 3, 5, 3)], source="torch x")
    with pytest.raises(ValueError, match=r"has 1 weights.*gives 2 arrays"):
        assign(layer, [randn(3, 3, 3, 5), randn(5)])


def test_copy_weights_lists_every_leftover():
    state = {**bn_state(), "extra.weight": randn(2)}
    with pytest.raises(ValueError) as err:
        copy_weights(bn_model(), state, {"conv": "conv"})
    message = str(err.value)
    assert "unused torch tensors: ['bn.bias', 'bn.running_mean'" in message
    assert "'extra.weight'" in message
    assert "Keras layers left unassigned: ['bn']" in message


def test_copy_weights_tensor_used_twice():
    inputs = keras.Input((None, None, 4))
    a = keras.layers.Conv2D(4, 1, use_bias=False, name="a")(inputs)
    b = keras.layers.Conv2D(4, 1, use_bias=False, name="b")(a)
    model = keras.Model(inputs, b)
    with pytest.raises(ValueError, match=r"used more than once: \{'w.weight': \['a', 'b'\]\}"):
        copy_weights(model, {"w.weight": randn(4, 4, 1, 1)}, {"a": "w", "b": "w"})


def test_copy_weights_unknown_layer_and_missing_tensor():
    with pytest.raises(ValueError, match=r"no Keras layer with weights named \['nope'\]"):
        copy_weights(bn_model(), bn_state(), {"nope": "conv"})
    state = bn_state()
    del state["bn.running_var"]
    with pytest.raises(KeyError, match=r"'bn.running_var'.*tensors under 'bn'"):
        copy_weights(bn_model(), state, {"conv": "conv", "bn": "bn"})


def test_copy_weights_custom_arrays_count_as_used():
    state = bn_state()
    gamma_beta = [state["bn.weight"], state["bn.bias"]]
    stats = [state["bn.running_mean"], state["bn.running_var"]]
    keys = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    mapping = {"conv": "conv", "bn": Arrays(keys, gamma_beta + stats)}
    assert copy_weights(bn_model(), state, mapping) == 5


def test_copy_weights_reaches_nested_models():
    inner_in = keras.Input((None, None, 4))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 1, use_bias=False, name="conv")(inner_in))
    inputs = keras.Input((None, None, 4))
    bn = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")
    model = keras.Model(inputs, bn(inner(inputs)))
    state = bn_state()
    assert copy_weights(model, state, {"conv": "conv", "bn": "bn"}) == 5
    kernel = keras.ops.convert_to_numpy(inner.get_layer("conv").kernel)
    np.testing.assert_array_equal(kernel, conv_kernel(state["conv.weight"]))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(bn.moving_variance), state["bn.running_var"]
    )


def test_conv_bn_system_mapping_covers_its_model():
    """The proof system's Keras twin takes a torch-shaped state dict with nothing left over."""
    from benchmarks.parity.systems import conv_bn

    for case in conv_bn.CASES:
        m = conv_bn.MULTIPLIER[case]
        state = {
            "conv1.weight": randn(8, 3, 3, 3),
            **{f"bn1.{k}": randn(8) for k in ("weight", "bias", "running_mean", "running_var")},
            "dw.weight": randn(8 * m, 1, 3, 3),
            "dw.bias": randn(8 * m),
            **{f"bn2.{k}": randn(8 * m) for k in ("weight", "bias", "running_mean", "running_var")},
            "up.weight": randn(8 * m, conv_bn.CLASSES, 4, 4),
            "up.bias": randn(conv_bn.CLASSES),
        }
        assert copy_weights(conv_bn.keras_model(case), state, conv_bn.MAPPING) == len(state)


# ------------------------------------------------------------------ reference file, bound


def test_reference_round_trip_drops_batch_counters(tmp_path):
    path = tmp_path / "r.npz"
    state = {"a.weight": randn(2, 3), "bn.num_batches_tracked": np.array(7)}
    xs, ys = [randn(1, 3, 5, 3), randn(1, 5, 3, 3)], [randn(1, 3, 5, 2), randn(1, 5, 3, 2)]
    save_reference(path, state, xs, ys, {"reference": "r"})
    loaded_state, inputs, outputs, meta = load_reference(path)
    assert list(loaded_state) == ["a.weight"] and meta == {"reference": "r"}
    for got, want in zip(inputs + outputs, xs + ys, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="equal length"):
        save_reference(path, state, xs, ys[:1], {})


def test_compare_and_bound():
    ref = [np.full((1, 3, 3, 2), 50.0, np.float32)]
    result = compare([ref[0] + 0.004], ref, [np.zeros((1, 3, 3, 3))])
    assert result["max_abs_diff"] == pytest.approx(0.004, rel=1e-3)
    assert result["logit_scale"] == 50.0 and result["sizes"] == [[3, 3]]
    assert bound(50.0) == pytest.approx(5e-3) and bound(0.2) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match=r"shape \(1, 3, 3, 1\).*\(1, 3, 3, 2\)"):
        compare([ref[0][..., :1]], ref, [ref[0]])
    with pytest.raises(ValueError, match="NaN"):
        compare([ref[0] * np.nan], ref, [ref[0]])


# ------------------------------------------------------------------ driver


FAKE_SYSTEM = '''
"""A fake system: its torch side is a numpy conv in NCHW (run in a subprocess as the real one)."""
import numpy as np

CASES = ["good", "bad", "broken"]


def torch_reference(case, out_path):
    from benchmarks.parity.reference import save_reference

    if case == "broken":
        raise RuntimeError("the reference failed on purpose")
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    inputs = [rng.uniform(0, 255, (1, h, w_, 3)).astype(np.float32) for h, w_ in [(9, 7), (7, 11)]]
    outputs = []
    for x in inputs:
        xc = x.transpose(0, 3, 1, 2)
        oh, ow = xc.shape[2] - 2, xc.shape[3] - 2
        y = np.zeros((1, 4, oh, ow))
        for u in range(3):
            for v in range(3):
                y += np.einsum("nchw,oc->nohw", xc[:, :, u:u + oh, v:v + ow], w[:, :, u, v])
        outputs.append((y + b[None, :, None, None]).transpose(0, 2, 3, 1))
    save_reference(out_path, {"conv.weight": w, "conv.bias": b}, inputs, outputs, {"reference": "numpy"})


def keras_check(case, npz):
    import keras

    from benchmarks.parity.convert import copy_weights
    from benchmarks.parity.reference import compare, load_reference

    state, inputs, references, meta = load_reference(npz)
    x = keras.Input((None, None, 3))
    model = keras.Model(x, keras.layers.Conv2D(4, 3, name="conv")(x))
    copy_weights(model, state, {"conv": "conv"})
    outputs = [np.asarray(model(x)) for x in inputs]
    if case == "bad":
        outputs[1] = outputs[1] + 0.01 * max(1.0, float(np.abs(references[1]).max()))
    return {**compare(outputs, references, inputs), "reference": meta["reference"]}
'''


@pytest.fixture(scope="module")
def fake_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_parity")
    (root / "fakeparity").mkdir()
    (root / "fakeparity" / "__init__.py").write_text("")
    (root / "fakeparity" / "numpy_conv.py").write_text(textwrap.dedent(FAKE_SYSTEM))
    (root / "fakeparity" / "incomplete.py").write_text('CASES = ["a"]\n')
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith("fakeparity")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def fake_run(fake_package, tmp_path_factory):
    """The fake system run once by the driver into a JSON that already holds another row."""
    out = tmp_path_factory.mktemp("parity_out") / "parity.json"
    out.write_text(json.dumps({"results": {"other/row": {"system": "other", "case": "row"}}}))
    rows, data = driver.run(
        ["fakeparity.numpy_conv"], out=out, python=sys.executable, extra_path=[fake_package]
    )
    return out, {r["case"]: r for r in rows}, data


def test_driver_runs_the_torch_side_in_a_subprocess_and_compares(fake_run):
    _, rows, _ = fake_run
    good = rows["good"]
    assert good["passed"] and good["max_abs_diff"] < 1e-3, good
    assert good["sizes"] == [[9, 7], [7, 11]] and good["reference"] == "numpy"
    assert good["bound"] == pytest.approx(1e-4 * max(1.0, good["logit_scale"]))


def test_driver_fails_a_case_above_the_bound(fake_run):
    _, rows, _ = fake_run
    bad = rows["bad"]
    assert not bad["passed"] and bad["max_abs_diff"] > bad["bound"]


def test_driver_records_a_failing_torch_side(fake_run):
    _, rows, _ = fake_run
    broken = rows["broken"]
    assert not broken["passed"]
    assert "torch side of fakeparity.numpy_conv/broken failed" in broken["error"]
    assert "the reference failed on purpose" in broken["error"]


def test_driver_merges_rows_into_the_json(fake_run):
    out, _, data = fake_run
    on_disk = json.loads(out.read_text())
    assert on_disk == data
    assert set(on_disk["results"]) == {
        "other/row",
        "fakeparity.numpy_conv/good",
        "fakeparity.numpy_conv/bad",
        "fakeparity.numpy_conv/broken",
    }
    assert on_disk["rel_bound"] == 1e-4
    row = {"system": "other", "case": "row", "passed": True, "new": 1}
    merged = driver.merge_results(out, [row])
    assert merged["results"]["other/row"] == row  # same key replaced, others kept
    assert len(merged["results"]) == 4


def test_main_exit_status(fake_package, tmp_path, monkeypatch, capsys):
    out = tmp_path / "p.json"
    args = [
        "--systems",
        "fakeparity.numpy_conv",
        "--out",
        str(out),
        "--torch-python",
        sys.executable,
    ]
    monkeypatch.setenv("PYTHONPATH", str(fake_package))  # kept after the root for the subprocess
    assert parity_main.main(args) == 1
    assert set(json.loads(out.read_text())["results"]) == {
        f"fakeparity.numpy_conv/{case}" for case in ("good", "bad", "broken")
    }
    err = capsys.readouterr().err
    assert "case(s) failed: fakeparity.numpy_conv/bad, fakeparity.numpy_conv/broken" in err


def test_missing_torch_venv_names_make_parity_venv(tmp_path, capsys):
    missing = tmp_path / "no-venv" / "bin" / "python"
    with pytest.raises(driver.ParityError, match="make parity-venv"):
        driver.torch_python(missing)
    args = [
        "--systems",
        "conv_bn",
        "--out",
        str(tmp_path / "p.json"),
        "--torch-python",
        str(missing),
    ]
    assert parity_main.main(args) == 2
    assert "run `make parity-venv` first" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_discovery_and_interface_check(fake_package):
    assert "conv_bn" in driver.discover_systems()
    with pytest.raises(driver.ParityError, match=r"lacks \['torch_reference', 'keras_check'\]"):
        driver.load_system("fakeparity.incomplete")
    with pytest.raises(driver.ParityError, match=r"no system 'nope'.*conv_bn"):
        driver.load_system("nope")


def test_docs_table_rewrite(tmp_path):
    docs = tmp_path / "parity.md"
    docs.write_text(f"intro\n{driver.TABLE_START}\nold\n{driver.TABLE_END}\nafter\n")
    row = {
        "system": "s",
        "case": "c",
        "reference": "r",
        "sizes": [[33, 47]],
        "max_abs_diff": 2e-6,
        "logit_scale": 3.0,
        "bound": 3e-4,
        "passed": True,
    }
    driver.rewrite_docs({"results": {"s/c": row}}, docs)
    text = docs.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "| s/c | r | 33×47 | 2.00e-06 | 3 | 3.00e-04 | pass |" in text
    docs.write_text("no markers")
    with pytest.raises(driver.ParityError, match="markers"):
        driver.rewrite_docs({"results": {}}, docs)


def test_docs_parity_table_is_current():
    """docs/parity.md shows benchmarks/results/parity.json (fix: python -m benchmarks.parity --no-run --docs)."""
    data = json.loads(Path(driver.DEFAULT_OUT).read_text())
    text = Path(driver.DOCS).read_text()
    table = text.split(driver.TABLE_START, 1)[1].split(driver.TABLE_END, 1)[0].strip()
    assert table == driver.format_table(data["results"]), (
        "docs/parity.md's table is stale: run `python -m benchmarks.parity --no-run --docs`"
    )
    assert "conv_bn/stack" in data["results"]


def test_concurrent_merges_lose_no_row(tmp_path):
    """Several helpers run the driver at once: every process's rows end up in the JSON."""
    import subprocess

    out = tmp_path / "parity.json"
    code = (
        "import sys; from benchmarks.parity import driver\n"
        "for i in range(20):\n"
        "    with driver.results_lock(sys.argv[1]):\n"
        "        driver.merge_results(sys.argv[1], [{'system': sys.argv[2], 'case': str(i)}])\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(out), f"s{k}"], cwd=driver.ROOT)
        for k in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert len(json.loads(out.read_text())["results"]) == 60
