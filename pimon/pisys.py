"""Read sysfs sensors and Raspberry Pi specifics: model, CPU temperature, throttling.

Every path hangs off a root prefix so tests can point it at a fake tree.
Sensor files are found once and cached (globbing sysfs on every sample would
cost more than reading it); when something is missing the search is retried
every ``RESCAN_S`` seconds, and a cached file that stops reading triggers a
fresh search on the next sample (hwmon numbers can change on driver reload).

Throttling on a Raspberry Pi: the ``rpi_volt`` alarm (Pi 4 and 5 kernels) is a
file read, so the current under-voltage is fresh on every sample; the other
flags need ``vcgencmd get_throttled``, a fork costing a few milliseconds, so
it runs at most every ``VCGENCMD_EVERY_S`` seconds and is cached in between.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

Runner = Callable[[list[str]], str | None]

RESCAN_S = 300.0
VCGENCMD_EVERY_S = 10.0
UNDER_VOLTAGE_BIT = 1 << 0
READ_LIMIT = 1 << 20
# `vcgencmd get_throttled` bits, in bit order; unknown bits are ignored.
THROTTLE_FLAGS: dict[int, str] = {
    0: "under-voltage",
    1: "arm-frequency-capped",
    2: "throttled",
    3: "soft-temp-limit",
    16: "under-voltage-since-boot",
    17: "arm-frequency-capped-since-boot",
    18: "throttled-since-boot",
    19: "soft-temp-limit-since-boot",
}
CPU_HWMON_NAMES = frozenset({"cpu_thermal", "coretemp", "k10temp", "zenpower", "soc_thermal"})
CPU_ZONE_HINTS = ("cpu", "x86_pkg_temp", "soc")
MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
VCGENCMD = ["vcgencmd", "get_throttled"]
_logged: set[str] = set()


def debug_once(key: str, message: str) -> None:
    """Log ``message`` at debug level the first time ``key`` comes up."""
    if key not in _logged:
        _logged.add(key)
        log.debug("%s", message)


def read_text(path: str, limit: int = READ_LIMIT) -> str | None:
    """Return a file's text, or None (logged once at debug) when it cannot be read."""
    # os.open/os.read skip the buffered-io objects open() builds: a sample reads ~10 files.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks = [os.read(fd, min(limit, 65536))]
            size = len(chunks[0])
            while chunks[-1] and size < limit:
                chunks.append(os.read(fd, min(limit - size, 65536)))
                size += len(chunks[-1])
        finally:
            os.close(fd)
    except OSError as exc:
        debug_once(path, f"cannot read {path}: {exc}")
        return None
    return b"".join(chunks).decode("utf-8", "replace")


def decode_throttled(value: int) -> list[str]:
    """Return the flag names set in a ``get_throttled`` bit mask, in bit order."""
    return [name for bit, name in THROTTLE_FLAGS.items() if value >> bit & 1]


def parse_get_throttled(output: str) -> int | None:
    """Return the bit mask of ``vcgencmd get_throttled`` output, or None if garbled."""
    key, sep, value = output.strip().partition("=")
    if key != "throttled" or not sep:
        return None
    try:
        mask = int(value, 16)
    except ValueError:
        return None
    return mask if mask >= 0 else None


def run_command(argv: list[str], timeout: float = 2.0) -> str | None:
    """Run a command and return its stdout, or None when it is missing or fails."""
    import subprocess  # lazily: most agents never fork

    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        debug_once(f"run:{argv[0]}", f"{argv[0]} unavailable: {exc}")
        return None
    if done.returncode != 0:
        debug_once(f"run:{argv[0]}", f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
        return None
    return done.stdout


def read_model(root: str) -> str | None:
    """Return the device-tree model string (e.g. a Raspberry Pi's), or None."""
    for name in MODEL_FILES:
        text = read_text(os.path.join(root, name), limit=4096)
        model = text.replace("\x00", "").strip() if text else ""
        if model:
            return model[:200]
    return None


def _hwmon_dirs(root: str) -> list[tuple[str, str]]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, "sys/class/hwmon/hwmon*"))):
        name = read_text(os.path.join(path, "name"), limit=256)
        out.append((path, name.strip() if name else ""))
    return out


def find_temperature_files(root: str) -> list[str]:
    """Return the millidegree files of the CPU sensor (hwmon first, then thermal zones)."""
    for path, name in _hwmon_dirs(root):
        if name in CPU_HWMON_NAMES or "cpu" in name:
            files = sorted(glob.glob(os.path.join(path, "temp*_input")))
            if files:
                return files
    zones: list[tuple[str, str]] = []
    for path in sorted(glob.glob(os.path.join(root, "sys/class/thermal/thermal_zone*"))):
        kind = read_text(os.path.join(path, "type"), limit=256) or ""
        zones.append((kind.strip().lower(), os.path.join(path, "temp")))
    preferred = [p for kind, p in zones if any(hint in kind for hint in CPU_ZONE_HINTS)]
    # No zone says CPU: the hottest one is the safest stand-in for an over-heat rule.
    return preferred or [p for _, p in zones]


def find_volt_alarm(root: str) -> str | None:
    """Return the under-voltage alarm file of the ``rpi_volt`` hwmon device, or None."""
    for path, name in _hwmon_dirs(root):
        alarm = os.path.join(path, "in0_lcrit_alarm")
        if name == "rpi_volt" and os.path.exists(alarm):
            return alarm
    return None


class Sensors:
    """The machine's model, CPU temperature and throttle flags under ``root``."""

    def __init__(self, root: str, run: Runner) -> None:
        self._root = root
        self._run = run
        self.model = read_model(root)
        # vcgencmd is forked only on a Pi, and never again once it has failed.
        self._vcgencmd = self.model is not None and self.model.startswith("Raspberry Pi")
        self._temp_files: list[str] = []
        self._volt_alarm: str | None = None
        self._scanned_at: float | None = None
        self._mask = 0  # the last get_throttled answer, reused until it is due again
        self._asked_at: float | None = None

    def _rescan_if_due(self, now: float, *, force: bool = False) -> None:
        missing = not self._temp_files or (not self._vcgencmd and self._volt_alarm is None)
        stale = self._scanned_at is None or (missing and now - self._scanned_at >= RESCAN_S)
        if force or stale:
            self._temp_files = find_temperature_files(self._root)
            self._volt_alarm = find_volt_alarm(self._root)
            self._scanned_at = now

    def _vanished(self, paths: list[str]) -> bool:
        # Only a file that is gone means renumbered hwmon; a garbled one is just broken.
        return not all(os.path.exists(p) for p in paths)

    def temperature(self, now: float) -> float | None:
        """Return the CPU temperature in °C, or None without a readable sensor."""
        self._rescan_if_due(now)
        values = [_int_file(p) for p in self._temp_files]
        if None in values and self._vanished(self._temp_files):
            self._rescan_if_due(now, force=True)
            values = [_int_file(p) for p in self._temp_files]
        # Millidegrees; readings outside this range come from a broken sensor.
        good = [v / 1000 for v in values if v is not None and -50_000 < v < 200_000]
        return round(max(good), 1) if good else None

    def throttled(self, now: float) -> list[str]:
        """Return throttle flags: vcgencmd's, cached, with a fresh under-voltage from rpi_volt."""
        self._rescan_if_due(now)
        if self._volt_alarm is not None and self._vanished([self._volt_alarm]):
            self._rescan_if_due(now, force=True)
        mask = self._firmware_mask(now)
        alarm = _int_file(self._volt_alarm) if self._volt_alarm is not None else None
        if alarm is not None:
            mask = (mask & ~UNDER_VOLTAGE_BIT) | (UNDER_VOLTAGE_BIT if alarm == 1 else 0)
        return decode_throttled(mask)

    def _firmware_mask(self, now: float) -> int:
        if not self._vcgencmd:
            return 0
        # A clock that went backwards also makes it due, rather than never.
        if self._asked_at is not None and 0 <= now - self._asked_at < VCGENCMD_EVERY_S:
            return self._mask
        self._asked_at = now
        output = self._run(VCGENCMD)
        mask = parse_get_throttled(output) if output is not None else None
        if mask is None:
            self._vcgencmd = False
            debug_once(
                "vcgencmd", f"vcgencmd get_throttled unusable ({output!r}); not asking again"
            )
        self._mask = mask or 0
        return self._mask


def _int_file(path: str) -> int | None:
    text = read_text(path, limit=256)
    try:
        return int(text) if text is not None else None
    except ValueError:
        debug_once(f"garbled:{path}", f"garbled {path}: {text!r}")
        return None
