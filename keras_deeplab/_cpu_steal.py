"""The share of CPU time the hypervisor took from this machine ("steal" in `/proc/stat`).

On a shared cloud VM the host can run other guests on our virtual cores; Linux counts that time
as steal. A timing taken meanwhile measures the neighbours as much as the code, so the demo and
the benchmarks report the share beside their times. Linux only: `None` elsewhere.

Example:
    ```python
    before = cpu_times()
    ...  # timed work
    share = steal_share(before)  # e.g. 0.38: the hypervisor ran others 38% of the time
    ```
"""

from pathlib import Path

STAT = Path("/proc/stat")
# From this share on, the demo says that its times are slowed down by the host.
NOTABLE_STEAL = 0.05


def cpu_times(stat=STAT):
    """All cores' CPU time so far (clock ticks): `{"busy", "idle", "steal"}`, or None."""
    try:
        fields = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal}


def steal_share(before, after=None):
    """Fraction (0-1) of all CPU time between two `cpu_times()` readings (`after` defaults to
    now) that the hypervisor took; None without readings or without elapsed ticks."""
    after = cpu_times() if after is None else after
    if before is None or after is None:
        return None
    delta = {key: after[key] - before[key] for key in ("busy", "idle", "steal")}
    total = sum(delta.values())
    return delta["steal"] / total if total > 0 else None


def steal_note(share):
    """One line for a report, or "" when the share is unknown or below `NOTABLE_STEAL`."""
    if share is None or share < NOTABLE_STEAL:
        return ""
    return (
        f"the hypervisor took {share:.0%} of this VM's CPU time meanwhile (steal in /proc/stat): "
        "these times measure a shared host, not the machine's own speed"
    )
