"""The CLI as a terminal user sees it: no start-up noise, help without TensorFlow, Ctrl-C in train."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "keras_deeplab.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
        **kwargs,
    )


def test_models_prints_only_the_list():
    done = _run(["models"])
    assert done.returncode == 0
    assert done.stderr == ""  # no oneDNN / absl / cpu_feature_guard lines
    first = done.stdout.splitlines()[0]
    assert first == "context_mobilenetv2"  # sorted: the first registered name


def test_verbose_shows_the_native_logs():
    done = _run(["models", "--verbose"])
    assert done.returncode == 0
    # TF's native (absl) log lines, e.g. `I0000 00:00:... cpu_feature_guard.cc:...`; which ones
    # depends on the machine (oneDNN notice on AVX-512 CPUs, CUDA stub where no driver is).
    assert re.search(r"^[IWE]\d{4} \S+ +\d+ \w+\.cc:\d+\]", done.stderr, re.M), done.stderr


def test_help_and_argument_errors_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "from keras_deeplab.cli import main\n"
        "for argv in (['--help'], ['eval', '--help'], ['eval', '--bogus']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert "heavy: []" in done.stdout, done.stdout + done.stderr
    assert "--crf-preset" in done.stdout and "(default: artifacts/eval)" in done.stdout


@pytest.mark.slow  # suite time: 26 s; resume after SIGKILL stays in test_training_distributed
def test_train_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path):
    run = tmp_path / "run"
    argv = [
        "train",
        "--config",
        "shapes_demo",
        f"checkpoint.dir={run}",
        "train.steps=400",
        "train.batch_size=2",
        "data.options.num_examples=8",
        "data.eval_split=null",
        "data.options.image_size=33",
        "data.crop_size=33",
        "checkpoint.every_steps=1",
        "checkpoint.tensorboard=false",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_deeplab.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(run.glob("ckpt-*.index")):
        time.sleep(0.5)
    assert list(run.glob("ckpt-*.index")), "no checkpoint was written"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "last checkpoint is" in lines[0] and "resume" in lines[0], err
    assert "Traceback" not in err
    done = _run([a if a != "train.steps=400" else "train.steps=1" for a in argv])
    # train.steps=1 is already reached: the rerun restores and reports it resumed.
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and str(run) in done.stdout
