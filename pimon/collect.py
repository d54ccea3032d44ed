"""Collect the agent's metrics and health problems, cheaply, on a timer.

On Linux every figure is read straight from procfs/sysfs under a root prefix
(a sample reads about ten small files), so it is cheap and testable on fake
trees. psutil is imported only where /proc is absent, because importing it
costs the agent memory.

CPU percent and the swap rate are deltas since the previous sample. The first
sample reports ``cpu_percent`` None ("unknown") rather than a since-boot
average, which would hide a busy node behind its idle past.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pimon.health import DEFAULT_THRESHOLDS, Thresholds, problems
from pimon.pisys import (
    CPU_HWMON_NAMES,
    Runner,
    Sensors,
    debug_once,
    decode_throttled,
    read_text,
    run_command,
)
from pimon.wire import Metrics

__all__ = ["Collector", "Reading", "Thresholds", "decode_throttled", "percent_used"]

StatVfs = Callable[[str], os.statvfs_result]
MEMINFO_KEYS = frozenset({"MemTotal", "MemAvailable", "SwapTotal", "SwapFree"})


@dataclass(slots=True)
class Reading:
    """One raw reading: metrics without the delta-based figures, plus their counters."""

    metrics: Metrics
    cpu_ticks: tuple[float, float] | None = None  # (idle, total) since boot
    swap_pages: int | None = None  # pswpin + pswpout since boot


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _percent(part: float, whole: float) -> float | None:
    if whole <= 0 or not 0 <= part <= whole:
        return None
    return round(100.0 * part / whole, 1)


def parse_cpu_ticks(stat: str) -> tuple[float, float] | None:
    """Return (idle, total) jiffies from the aggregate ``cpu`` line of /proc/stat."""
    fields = stat.split("\n", 1)[0].split()
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    try:
        # user nice system idle iowait irq softirq steal; guest is already inside user.
        ticks = [int(f) for f in fields[1:9]]
    except ValueError:
        return None
    if min(ticks) < 0:
        return None
    return float(ticks[3] + ticks[4]), float(sum(ticks))


def parse_loadavg(text: str) -> tuple[float, float, float] | None:
    """Return the 1, 5 and 15 minute load averages from /proc/loadavg."""
    values = [_number(f) for f in text.split()[:3]]
    if len(values) != 3 or any(v is None or v < 0 for v in values):
        return None
    load1, load5, load15 = values
    assert load1 is not None and load5 is not None and load15 is not None
    return load1, load5, load15


def parse_meminfo(text: str) -> dict[str, int]:
    """Return MemTotal, MemAvailable, SwapTotal and SwapFree in bytes, where present."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in MEMINFO_KEYS:
            value = rest.split()[0] if rest.split() else ""
            if value.isdigit():
                out[key] = int(value) * 1024
    return out


def parse_net_dev(text: str) -> tuple[int, int] | None:
    """Return received and sent bytes summed over all interfaces but loopback."""
    rx = tx = 0
    seen = False
    for line in text.splitlines()[2:]:
        name, sep, data = line.partition(":")
        fields = data.split()
        if not sep or len(fields) < 9 or not (fields[0].isdigit() and fields[8].isdigit()):
            continue
        seen = True
        if name.strip() != "lo":
            rx += int(fields[0])
            tx += int(fields[8])
    return (rx, tx) if seen else None


def parse_vmstat_swap(text: str) -> int | None:
    """Return pswpin + pswpout (pages swapped since boot) from /proc/vmstat."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("pswp"):
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                found[key] = int(value)
    if "pswpin" not in found or "pswpout" not in found:
        return None
    return found["pswpin"] + found["pswpout"]


def parse_uptime(text: str) -> float | None:
    """Return seconds since boot from /proc/uptime."""
    fields = text.split()
    value = _number(fields[0]) if fields else None
    return value if value is not None and value >= 0 else None


def percent_used(st: os.statvfs_result) -> float | None:
    """Return a filesystem's percent used as ``df`` shows it: used / (used + available)."""
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    return _percent(used, used + avail)


class Collector:
    """Sample metrics and problems of the machine under ``root``; keeps deltas between calls."""

    def __init__(
        self,
        root: str = "/",
        mounts: Sequence[str] = ("/",),
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        run: Runner | None = None,
        statvfs: StatVfs | None = None,
        *,
        use_psutil: bool | None = None,
    ) -> None:
        self.root = root
        self.thresholds = thresholds
        normal = (m.rstrip("/") or "/" for m in mounts)
        self.mounts = tuple(m for m in dict.fromkeys(normal) if m != "/")
        self._proc = os.path.join(root, "proc")
        self._statvfs: StatVfs | None = statvfs or getattr(os, "statvfs", None)
        self._sensors = Sensors(root, run or run_command)
        if use_psutil is None:  # psutil only where there is no procfs to read
            use_psutil = root == "/" and not os.path.exists("/proc/stat")
        self._use_psutil = use_psutil
        self._prev_cpu: tuple[float, float] | None = None
        self._prev_swap: tuple[float, int] | None = None
        self._swap_since: float | None = None
        # pswpin + pswpout per second over the last interval; None when unknown.
        self.swap_pages_per_s: float | None = None

    def sample(self, now: float) -> tuple[Metrics, list[str]]:
        """Return the current metrics and problems; ``now`` is any steady clock in seconds."""
        reading = self._read_psutil() if self._use_psutil else self._read_procfs(now)
        metrics = reading.metrics
        metrics.cpu_percent = self._cpu_percent(reading.cpu_ticks)
        swapping_for = self._swapping_for(reading.swap_pages, now)
        found = problems(
            metrics,
            self.thresholds,
            swapping_for_s=swapping_for,
            swap_pages_per_s=self.swap_pages_per_s or 0.0,
        )
        return metrics, found

    def _read_procfs(self, now: float) -> Reading:
        stat = read_text(os.path.join(self._proc, "stat"), limit=4096)
        load = parse_loadavg(read_text(os.path.join(self._proc, "loadavg")) or "")
        mem = parse_meminfo(read_text(os.path.join(self._proc, "meminfo")) or "")
        net = parse_net_dev(read_text(os.path.join(self._proc, "net/dev")) or "")
        total, swap_total = mem.get("MemTotal"), mem.get("SwapTotal")
        metrics = Metrics(
            load1=load[0] if load else None,
            load5=load[1] if load else None,
            load15=load[2] if load else None,
            mem_total_bytes=total,
            mem_percent=_percent(total - mem["MemAvailable"], total)
            if total and "MemAvailable" in mem
            else None,
            # No swap configured is "0% used", as free(1) shows it.
            swap_percent=_percent(swap_total - mem["SwapFree"], swap_total)
            if swap_total and "SwapFree" in mem
            else (0.0 if swap_total == 0 else None),
            disk_percent=self._disk_percent("/"),
            temp_c=self._sensors.temperature(now),
            throttled=self._sensors.throttled(now),
            uptime_s=parse_uptime(read_text(os.path.join(self._proc, "uptime")) or ""),
            net_rx_bytes=net[0] if net else None,
            net_tx_bytes=net[1] if net else None,
            model=self._sensors.model,
            disks=self._extra_disks(),
        )
        return Reading(
            metrics,
            cpu_ticks=parse_cpu_ticks(stat) if stat else None,
            swap_pages=parse_vmstat_swap(read_text(os.path.join(self._proc, "vmstat")) or ""),
        )

    def _read_psutil(self) -> Reading:
        import psutil

        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        load = psutil.getloadavg()
        nics = psutil.net_io_counters(pernic=True)
        real = [c for name, c in nics.items() if not name.startswith("lo")]
        # Linux and FreeBSD only; elsewhere there is no temperature.
        temps: dict[str, list[Any]] = getattr(psutil, "sensors_temperatures", dict)()
        cpu_temps = [s.current for k, v in temps.items() if k in CPU_HWMON_NAMES for s in v]
        every_temp = [s.current for v in temps.values() for s in v]
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        metrics = Metrics(
            load1=round(load[0], 2),
            load5=round(load[1], 2),
            load15=round(load[2], 2),
            mem_percent=round(vm.percent, 1),
            mem_total_bytes=vm.total,
            swap_percent=round(sw.percent, 1),
            disk_percent=self._disk_percent("/"),
            temp_c=round(max(cpu_temps or every_temp), 1) if every_temp else None,
            # A measurement, not a decision: boot time is on the wall clock.
            uptime_s=round(time.time() - psutil.boot_time(), 2),
            net_rx_bytes=sum(c.bytes_recv for c in real),
            net_tx_bytes=sum(c.bytes_sent for c in real),
            disks=self._extra_disks(),
        )
        return Reading(metrics, (idle, total), (sw.sin + sw.sout) // page)

    def _disk_percent(self, mount: str) -> float | None:
        path = os.path.join(self.root, mount.lstrip("/"))
        try:
            if self._statvfs is None:  # Windows has no statvfs
                import psutil

                return round(psutil.disk_usage(path).percent, 1)
            return percent_used(self._statvfs(path))
        except OSError as exc:
            debug_once(f"disk:{path}", f"cannot stat {path}: {exc}")
            return None

    def _extra_disks(self) -> dict[str, float]:
        usage = {m: self._disk_percent(m) for m in self.mounts}
        return {m: p for m, p in usage.items() if p is not None}

    def _cpu_percent(self, ticks: tuple[float, float] | None) -> float | None:
        prev, self._prev_cpu = self._prev_cpu, ticks
        if prev is None or ticks is None:
            return None
        idle, total = ticks[0] - prev[0], ticks[1] - prev[1]
        return _percent(total - idle, total) if idle >= 0 else None

    def _swapping_for(self, pages: int | None, now: float) -> float:
        """Track the swap rate; return how long it has stayed at or above the threshold."""
        prev, self._prev_swap = self._prev_swap, (now, pages) if pages is not None else None
        self.swap_pages_per_s = None
        if prev is not None and pages is not None and now > prev[0] and pages >= prev[1]:
            self.swap_pages_per_s = round((pages - prev[1]) / (now - prev[0]), 1)
        rate = self.swap_pages_per_s
        if prev is None or rate is None or rate < self.thresholds.swap_pages_per_s:
            self._swap_since = None
            return 0.0
        if self._swap_since is None:
            # The rate covers the whole interval, so the swapping began by the previous sample.
            self._swap_since = prev[0]
        return now - self._swap_since
