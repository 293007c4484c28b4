"""Progress display that suits a terminal, a notebook and a log file alike.

On a terminal or in a notebook the bars redraw live. Written to a file or a pipe, tqdm's bars
update at most every `LOG_INTERVAL` seconds and the trainer's Keras bar becomes one line per
epoch: Keras redraws its bar every 0.05 s on any POSIX system, which filled a demo log with
about 400 KB of redraws.
"""

import sys

# Seconds between two tqdm updates when the bar's stream is not interactive.
LOG_INTERVAL = 30.0


def interactive(stream):
    """True when `stream` is shown live: a terminal, or any stream inside a Jupyter kernel."""
    return "ipykernel" in sys.modules or bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable, **kwargs):
    """`tqdm.auto.tqdm(iterable, **kwargs)`, updated every `LOG_INTERVAL` s in a log.

    Example:
        ```python
        for image in progress(images, desc="predicting", unit="img"):
            ...
        ```
    """
    from tqdm.auto import tqdm

    if not interactive(kwargs.get("file") or sys.stderr):
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(iterable, **kwargs)


def keras_bar_mode(verbose):
    """`keras.utils.Progbar` verbosity: the live bar (1) only where it is shown live (stdout)."""
    return 2 if verbose == 1 and not interactive(sys.stdout) else verbose
