"""Progress bars: live on a terminal or in a notebook, sparse in a log file."""

import io
import sys
import types

from keras_deeplab._progress import LOG_INTERVAL, interactive, keras_bar_mode, progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_sparse_updates_and_a_terminal_live_ones():
    log, tty = io.StringIO(), _Tty()
    assert not interactive(log) and interactive(tty)
    logged = progress(range(3), file=log, desc="evaluating")
    live = progress(range(3), file=tty, desc="evaluating")
    assert logged.mininterval == LOG_INTERVAL and live.mininterval < 1
    assert list(logged) == list(live) == [0, 1, 2]
    assert progress(range(3), file=log, mininterval=2).mininterval == 2  # the caller's wins


def test_keras_bar_is_live_only_where_it_is_seen_live(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert [keras_bar_mode(v) for v in (0, 1, 2)] == [0, 2, 2]
    monkeypatch.setattr(sys, "stdout", _Tty())
    assert [keras_bar_mode(v) for v in (0, 1, 2)] == [0, 1, 2]
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # Jupyter
    assert keras_bar_mode(1) == 1 and interactive(io.StringIO())
