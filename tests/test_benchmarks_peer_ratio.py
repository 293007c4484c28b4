"""`benchmarks.peer_ratio`: the timing-worker protocol and the interleaved rounds, with
sleep-based stand-ins for the two models (no TensorFlow, no keras-hub environment)."""

import io
import json

import pytest

from benchmarks import peer_ratio
from benchmarks._common import RESULT_TAG, serve_timings


def _sleeper(label, seconds, gflop):
    """A worker whose two precisions sleep `seconds` and half of it."""
    code = (
        "import time; from benchmarks._common import serve_timings; "
        f"serve_timings({{'float32': lambda: time.sleep({seconds}), "
        f"'bfloat16': lambda: time.sleep({seconds / 2})}}, {{'gflop_per_image': {gflop}}})"
    )
    worker = peer_ratio.TimingWorker(label, ["-c", code])
    worker.ready()
    return worker


def _tagged(text):
    return [json.loads(line[len(RESULT_TAG) :]) for line in text.splitlines() if RESULT_TAG in line]


def test_serve_timings_warms_up_then_answers_each_request(capsys):
    calls = {"a": 0, "b": 0}
    runners = {k: (lambda k=k: calls.__setitem__(k, calls[k] + 1)) for k in calls}
    requests = io.StringIO('{"variant": "a", "reps": 4}\n\n{"variant": "nope"}\n')
    serve_timings(runners, {"gflop_per_image": 2.0}, requests=requests)
    meta, answer, error = _tagged(capsys.readouterr().out)
    assert meta["gflop_per_image"] == 2.0 and meta["variants"] == ["a", "b"]
    assert calls == {"a": 1 + 4, "b": 1}  # one warm-up each, then the 4 timed calls of "a"
    assert answer["variant"] == "a" and 0 <= answer["best_ms"] <= answer["median_ms"]
    assert "unknown variant 'nope'" in error["error"]


def test_timing_worker_round_trip_and_errors():
    worker = _sleeper("ours", 0.02, 1.0)
    try:
        assert worker.meta["variants"] == ["bfloat16", "float32"]
        out = worker.time("float32", 2)
        assert 20 <= out["best_ms"] <= out["median_ms"] < 2000
        with pytest.raises(RuntimeError, match="ours worker: unknown variant 'int4'"):
            worker.time("int4", 1)
    finally:
        worker.close()
    broken = peer_ratio.TimingWorker("keras-hub", ["-c", "raise SystemExit('no keras_hub here')"])
    with pytest.raises(RuntimeError, match="keras-hub worker exited with code 1: no keras_hub"):
        broken.ready()
    broken.close()


def test_rounds_alternate_and_ratios_are_of_achieved_gflops(tmp_path):
    ours, peer = _sleeper("ours", 0.01, 3.0), _sleeper("keras-hub", 0.03, 2.0)
    try:
        records = peer_ratio.measure(ours, peer, rounds=3, reps=1)
    finally:
        ours.close()
        peer.close()
    assert [r["first"] for r in records] == ["ours", "keras-hub", "ours"]
    for r in records:
        for p in peer_ratio.PRECISIONS:
            cell = r[p]
            expected = (3.0 / cell["ours_ms"]) / (2.0 / cell["keras_hub_ms"])
            assert cell["ratio"] == pytest.approx(expected)
            assert cell["ratio"] > 1.5  # 1.5x the work in a third of the time, give or take
        assert r["steal"] is None or 0 <= r["steal"] <= 1
    summary = peer_ratio.summary(records)
    ratios = sorted(r["bfloat16"]["ratio"] for r in records)
    assert summary["bfloat16"]["median_ratio"] == pytest.approx(ratios[1])
    assert summary["float32"]["target"] == 1.5 and summary["bfloat16"]["target"] == 3.0
    report = {
        "command": "python -m benchmarks.peer_ratio",
        "date": "today",
        "machine": {"cpu": "test CPU", "cores": 2, "isa": ["avx2"]},
        "size": 512,
        "reps": 1,
        "ours": {"model": "ours", "gflop_per_image": 3.0},
        "keras_hub": {"model": "hub", "gflop_per_image": 2.0, "versions": {"keras_hub": "0"}},
        "rounds": records,
        "summary": summary,
    }
    text = peer_ratio.markdown(report)
    assert text.count("\n| ") == 1 + 3  # header and one row per round
    assert "bfloat16: median ratio" in text and "target 3.0x met in" in text


def test_missing_peer_environment_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(peer_ratio, "PEERS_PYTHON", tmp_path / "no-venv" / "python")
    with pytest.raises(SystemExit) as exit_info:
        peer_ratio.main(["--rounds", "1"])
    assert exit_info.value.code == 2
    assert "bash benchmarks/setup_peers.sh" in capsys.readouterr().err
