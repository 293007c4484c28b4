"""`keras_deeplab._cpu_steal`: the hypervisor's share of the CPU time, read from /proc/stat."""

import pytest

from benchmarks.report import steal_lines
from keras_deeplab._cpu_steal import NOTABLE_STEAL, cpu_times, steal_note, steal_share

# user nice system idle iowait irq softirq steal guest guest_nice
STAT = "cpu  1000 10 200 5000 40 0 30 700 0 0\ncpu0 500 5 100 2500 20 0 15 350 0 0\n"


def _stat(tmp_path, text):
    path = tmp_path / "stat"
    path.write_text(text)
    return path


def test_cpu_times_sums_the_busy_idle_and_steal_fields(tmp_path):
    times = cpu_times(_stat(tmp_path, STAT))
    assert times == {"busy": 1000 + 10 + 200 + 0 + 30, "idle": 5000 + 40, "steal": 700}


@pytest.mark.parametrize("text", ["", "intr 1 2 3\n", "cpu 1 2 3\n"])
def test_cpu_times_is_none_for_an_unreadable_or_foreign_file(tmp_path, text):
    assert cpu_times(_stat(tmp_path, text)) is None
    assert cpu_times(tmp_path / "missing") is None


def test_steal_share_is_the_steal_fraction_of_the_elapsed_ticks():
    before = {"busy": 100, "idle": 50, "steal": 10}
    after = {"busy": 140, "idle": 70, "steal": 50}  # 40 busy + 20 idle + 40 stolen
    assert steal_share(before, after) == pytest.approx(0.4)
    assert steal_share(before, before) is None  # no tick elapsed
    assert steal_share(None, after) is None


def test_a_live_reading_is_a_fraction_or_none():
    share = steal_share(cpu_times())
    assert share is None or 0.0 <= share <= 1.0


def test_the_note_and_the_report_line_speak_only_above_the_threshold():
    assert steal_note(None) == "" and steal_note(NOTABLE_STEAL / 2) == ""
    note = steal_note(0.38)
    assert "38%" in note and "steal" in note
    assert steal_lines({}) == []  # reports written before the field existed
    assert steal_lines({"cpu_steal_share": 0.01}) == [
        "CPU time taken by the hypervisor over the run (steal): 1.0%."
    ]
    assert note in steal_lines({"cpu_steal_share": 0.38})[0]
