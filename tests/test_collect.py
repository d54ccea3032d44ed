from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from pimon.collect import Collector, Thresholds, decode_throttled, percent_used
from pimon.pisys import find_temperature_files, parse_get_throttled, run_command
from pimon.wire import Metrics, metrics_dict

FIXTURES = Path(__file__).parent / "fixtures"
VCGENCMD = ["vcgencmd", "get_throttled"]


class FakeRun:
    """Stand-in for vcgencmd: records calls, answers with a fixed output."""

    def __init__(self, output: str | None) -> None:
        self.output = output
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str | None:
        self.calls.append(argv)
        return self.output


def fake_statvfs(root: Path, percents: dict[str, float]):
    """Return a statvfs answering ``percents`` (mount -> % used) for paths under root."""
    table = {os.path.join(str(root), m.lstrip("/")): p for m, p in percents.items()}

    def statvfs(path: str) -> os.statvfs_result:
        if path not in table:
            raise FileNotFoundError(2, "No such file or directory", path)
        used = round(table[path] * 10)
        return os.statvfs_result((4096, 4096, 1000, 1000 - used, 1000 - used, 0, 0, 0, 0, 255))

    return statvfs


def tree(name: str, tmp_path: Path) -> Path:
    """Copy a fixture tree so a test may rewrite its files."""
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def write_stat(root: Path, user: int, system: int, idle: int, iowait: int) -> None:
    line = f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 {user} 0 {system} {idle} 0\n"
    (root / "proc/stat").write_text(line)


def write_swap(root: Path, pages_in: int, pages_out: int) -> None:
    (root / "proc/vmstat").write_text(f"pgpgin 1\npswpin {pages_in}\npswpout {pages_out}\n")


def test_pi4_reads_thermal_zone_and_vcgencmd_flags():
    root = FIXTURES / "pi4"
    run = FakeRun("throttled=0x50005\n")
    statvfs = fake_statvfs(root, {"/": 40.0, "/data": 91.0})
    c = Collector(str(root), mounts=("/", "/data/"), run=run, statvfs=statvfs)
    m, found = c.sample(0.0)
    assert m == Metrics(
        cpu_percent=None,
        load1=0.52,
        load5=0.58,
        load15=0.59,
        mem_percent=13.1,
        mem_total_bytes=8052564 * 1024,
        swap_percent=0.0,
        disk_percent=40.0,
        temp_c=54.5,
        throttled=[
            "under-voltage",
            "throttled",
            "under-voltage-since-boot",
            "throttled-since-boot",
        ],
        uptime_s=123456.78,
        net_rx_bytes=1234567890,
        net_tx_bytes=98765432,
        model="Raspberry Pi 4 Model B Rev 1.4",
        disks={"/data": 91.0},
    )
    assert found == ["disk /data 91% full", "under-voltage", "throttled"]
    assert run.calls == [VCGENCMD]


def test_pi5_uses_rpi_volt_and_the_cpu_hwmon_not_hotter_chips():
    root = FIXTURES / "pi5"
    run = FakeRun("throttled=0xf000f\n")
    c = Collector(str(root), run=run, statvfs=fake_statvfs(root, {"/": 93.0}))
    m, found = c.sample(0.0)
    assert m.model == "Raspberry Pi 5 Model B Rev 1.0"  # from /sys/firmware/devicetree
    assert m.temp_c == 61.2  # cpu_thermal, not rp1_adc at 71 °C
    # rpi_volt reads 0, so vcgencmd's "under-voltage now" bit is overruled; the rest stands.
    assert m.throttled == [
        "arm-frequency-capped",
        "throttled",
        "soft-temp-limit",
        "under-voltage-since-boot",
        "arm-frequency-capped-since-boot",
        "throttled-since-boot",
        "soft-temp-limit-since-boot",
    ]
    assert (m.mem_percent, m.swap_percent) == (96.0, 75.0)
    assert (m.net_rx_bytes, m.net_tx_bytes) == (5000000000, 1200000000)
    assert found == [
        "disk / 93% full",
        "memory 96% used",
        "arm frequency capped",
        "throttled",
        "soft temperature limit",
    ]
    assert run.calls == [VCGENCMD]


def test_rpi_volt_is_read_every_sample_and_vcgencmd_every_10_s(tmp_path):
    root = tree("pi5", tmp_path)
    alarm = root / "sys/class/hwmon/hwmon2/in0_lcrit_alarm"
    run = FakeRun("throttled=0x50000\n")  # under-voltage and throttling, since boot only
    c = Collector(str(root), run=run, statvfs=fake_statvfs(root, {"/": 1.0}))
    seen: dict[int, list[str]] = {}
    for second in range(26):
        alarm.write_text("1\n" if 3 <= second < 5 else "0\n")
        if second == 11:
            run.output = "throttled=0x50002\n"  # the ARM frequency is capped from now on
        seen[second] = c.sample(float(second))[0].throttled
    since_boot = ["under-voltage-since-boot", "throttled-since-boot"]
    assert seen[2] == seen[5] == since_boot
    assert seen[3] == seen[4] == ["under-voltage", *since_boot]  # fresh, not the cached bit
    assert seen[19] == since_boot  # vcgencmd last asked at 10 s
    assert seen[20] == ["arm-frequency-capped", *since_boot]
    assert run.calls == [VCGENCMD] * 3  # at 0, 10 and 20 s


def test_failing_vcgencmd_leaves_rpi_volt_in_charge(tmp_path):
    root = tree("pi4", tmp_path)
    hwmon = root / "sys/class/hwmon/hwmon1"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("rpi_volt\n")
    (hwmon / "in0_lcrit_alarm").write_text("1\n")
    run = FakeRun(None)
    c = Collector(str(root), run=run, statvfs=fake_statvfs(root, {"/": 1.0}))
    for second in range(0, 40, 5):
        m, found = c.sample(float(second))
        assert m.throttled == ["under-voltage"]
        assert found[-1] == "under-voltage"
    assert run.calls == [VCGENCMD]


def test_pi5_under_voltage_alarm_is_a_problem(tmp_path):
    root = tree("pi5", tmp_path)
    (root / "sys/class/hwmon/hwmon2/in0_lcrit_alarm").write_text("1\n")
    c = Collector(str(root), run=FakeRun(None), statvfs=fake_statvfs(root, {"/": 10.0}))
    m, found = c.sample(0.0)
    assert m.throttled == ["under-voltage"]
    assert found == ["memory 96% used", "under-voltage"]


def test_zero2w_is_hot_at_the_soft_temperature_limit():
    root = FIXTURES / "zero2w"
    run = FakeRun("throttled=0x80008\n")
    c = Collector(str(root), run=run, statvfs=fake_statvfs(root, {"/": 55.5}))
    m, found = c.sample(0.0)
    assert (m.model, m.temp_c, m.disk_percent) == ("Raspberry Pi Zero 2 W Rev 1.0", 82.1, 55.5)
    assert m.throttled == ["soft-temp-limit", "soft-temp-limit-since-boot"]
    assert (m.mem_total_bytes, m.swap_percent) == (439708 * 1024, 50.0)
    assert (m.net_rx_bytes, m.net_tx_bytes) == (87654321, 12345678)
    assert found == ["temp 82.1°C", "soft temperature limit"]


def test_x86_without_sensors_is_healthy_and_never_forks():
    root = FIXTURES / "x86"
    run = FakeRun("throttled=0x5\n")
    c = Collector(str(root), run=run, statvfs=fake_statvfs(root, {"/": 12.0}))
    m, found = c.sample(0.0)
    assert (m.model, m.temp_c, m.throttled) == (None, None, [])
    assert (m.load1, m.load5, m.load15, m.uptime_s) == (0.08, 0.11, 0.09, 350000.01)
    assert m.mem_percent == 20.3
    assert m.net_rx_bytes == 9876543210 + 1000  # every interface but lo
    assert m.net_tx_bytes == 1234567890 + 2000
    assert found == []
    assert run.calls == []


def test_garbled_files_give_none_not_errors():
    root = FIXTURES / "garbled"
    c = Collector(
        str(root), mounts=("/", "/gone"), run=FakeRun("x"), statvfs=fake_statvfs(root, {})
    )
    for now in (0.0, 1.0):
        m, found = c.sample(now)
        assert m == Metrics()
        assert found == []
    assert c.swap_pages_per_s is None


def test_empty_root_gives_none(tmp_path):
    c = Collector(str(tmp_path), run=FakeRun(None), statvfs=fake_statvfs(tmp_path, {}))
    m, _ = c.sample(0.0)
    assert metrics_dict(m) == metrics_dict(Metrics())


def test_cpu_percent_comes_from_the_delta_between_samples(tmp_path):
    root = tree("x86", tmp_path)
    c = Collector(str(root), statvfs=fake_statvfs(root, {"/": 1.0}))
    write_stat(root, user=1000, system=500, idle=8000, iowait=500)
    assert c.sample(0.0)[0].cpu_percent is None  # first sample: unknown
    write_stat(root, user=1300, system=600, idle=8550, iowait=550)
    assert c.sample(1.0)[0].cpu_percent == 40.0
    assert c.sample(2.0)[0].cpu_percent is None  # no ticks elapsed
    write_stat(root, user=1300, system=600, idle=9550, iowait=550)
    assert c.sample(3.0)[0].cpu_percent == 0.0
    write_stat(root, user=1, system=1, idle=1, iowait=1)  # counters reset: unknown, no crash
    assert c.sample(4.0)[0].cpu_percent is None


def test_heavy_swapping_only_after_it_is_sustained(tmp_path):
    root = tree("pi5", tmp_path)
    c = Collector(str(root), statvfs=fake_statvfs(root, {"/": 1.0}))
    heavy = "heavy swapping (1500 pages/s)"
    pages = 0
    for second in range(60):
        write_swap(root, pages, pages)
        _, found = c.sample(float(second))
        assert heavy not in found, second
        pages += 750
    write_swap(root, pages, pages)
    _, found = c.sample(60.0)
    assert found[-1] == heavy
    assert c.swap_pages_per_s == 1500.0
    # One calm interval resets the clock: the next burst must last 60 s again.
    write_swap(root, pages, pages)
    assert heavy not in c.sample(61.0)[1]
    assert c.swap_pages_per_s == 0.0
    for second in range(62, 121):  # heavy again from the 61 s sample on
        pages += 750
        write_swap(root, pages, pages)
        assert heavy not in c.sample(float(second))[1], second
    pages += 750
    write_swap(root, pages, pages)
    assert heavy in c.sample(121.0)[1]


def test_swapping_below_the_rate_is_never_a_problem(tmp_path):
    root = tree("pi5", tmp_path)
    slow = Thresholds(swap_pages_per_s=2000.0, swap_sustain_s=5.0)
    c = Collector(str(root), thresholds=slow, statvfs=fake_statvfs(root, {"/": 1.0}))
    for second in range(20):
        write_swap(root, second * 999, second * 1000)
        assert not any("swapping" in p for p in c.sample(float(second))[1])
    assert c.swap_pages_per_s == 1999.0


@pytest.mark.parametrize("output", [None, "VCHI initialization failed\n", "throttled=zz\n"])
def test_failing_vcgencmd_is_asked_once(output):
    run = FakeRun(output)
    root = FIXTURES / "pi4"
    c = Collector(str(root), run=run, statvfs=fake_statvfs(root, {"/": 1.0}))
    for now in range(3):
        m, _ = c.sample(float(now))
        assert m.throttled == []
    assert run.calls == [VCGENCMD]


def test_renumbered_hwmon_is_found_again(tmp_path):
    root = tree("zero2w", tmp_path)
    shutil.rmtree(root / "sys/class/thermal")
    c = Collector(str(root), run=FakeRun(None), statvfs=fake_statvfs(root, {"/": 1.0}))
    assert c.sample(0.0)[0].temp_c == 82.1
    (root / "sys/class/hwmon/hwmon0").rename(root / "sys/class/hwmon/hwmon7")
    assert c.sample(1.0)[0].temp_c == 82.1


@pytest.mark.parametrize(
    ("zones", "expected"),
    [
        ({"acpitz": 27800, "x86_pkg_temp": 45000, "iwlwifi_1": 50000}, 45.0),
        ({"acpitz": 27800, "iwlwifi_1": 50000}, 50.0),  # no CPU zone: the hottest
        ({"cpu-thermal": 48300, "gpu-thermal": 51000}, 48.3),
        ({"soc_thermal": 39000, "battery": 30000}, 39.0),
    ],
)
def test_thermal_zone_choice(tmp_path, zones, expected):
    for i, (kind, milli) in enumerate(zones.items()):
        zone = tmp_path / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli}\n")
    c = Collector(str(tmp_path), run=FakeRun(None), statvfs=fake_statvfs(tmp_path, {}))
    assert c.sample(0.0)[0].temp_c == expected


def test_cpu_hwmon_wins_over_thermal_zones(tmp_path):
    hwmon = tmp_path / "sys/class/hwmon/hwmon0"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("coretemp\n")
    (hwmon / "temp1_input").write_text("52000\n")
    (hwmon / "temp2_input").write_text("55000\n")
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("x86_pkg_temp\n")
    (zone / "temp").write_text("70000\n")
    assert find_temperature_files(str(tmp_path)) == [
        str(hwmon / "temp1_input"),
        str(hwmon / "temp2_input"),
    ]


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (0, "under-voltage"),
        (1, "arm-frequency-capped"),
        (2, "throttled"),
        (3, "soft-temp-limit"),
        (16, "under-voltage-since-boot"),
        (17, "arm-frequency-capped-since-boot"),
        (18, "throttled-since-boot"),
        (19, "soft-temp-limit-since-boot"),
    ],
)
def test_decode_throttled_each_bit(bit, name):
    assert decode_throttled(1 << bit) == [name]


@pytest.mark.parametrize(
    ("value", "names"),
    [
        (0x0, []),
        (
            0x50005,
            ["under-voltage", "throttled", "under-voltage-since-boot", "throttled-since-boot"],
        ),
        (0x80008, ["soft-temp-limit", "soft-temp-limit-since-boot"]),
        (0x50000, ["under-voltage-since-boot", "throttled-since-boot"]),
        (0x3, ["under-voltage", "arm-frequency-capped"]),
        (0xF0 | 0xF00 | 0x100000, []),  # undocumented bits are ignored
    ],
)
def test_decode_throttled_combinations(value, names):
    assert decode_throttled(value) == names


@pytest.mark.parametrize(
    ("output", "mask"),
    [
        ("throttled=0x50005\n", 0x50005),
        ("throttled=0x0", 0),
        ("throttled=-0x1", None),
        ("throttled=", None),
        ("VCHI initialization failed", None),
        ("", None),
    ],
)
def test_parse_get_throttled(output, mask):
    assert parse_get_throttled(output) == mask


def test_percent_used_matches_df_with_reserved_blocks():
    # 1000 blocks, 100 free, 50 of them available to users: df says 900/(900+50).
    st = os.statvfs_result((4096, 4096, 1000, 100, 50, 0, 0, 0, 0, 255))
    assert percent_used(st) == 94.7
    empty = os.statvfs_result((4096, 4096, 0, 0, 0, 0, 0, 0, 0, 255))
    assert percent_used(empty) is None


def test_run_command_returns_stdout_or_none():
    assert run_command([sys.executable, "-c", "print('throttled=0x0')"]) == "throttled=0x0\n"
    assert run_command([sys.executable, "-c", "raise SystemExit(3)"]) is None
    assert run_command(["/nonexistent/vcgencmd", "get_throttled"]) is None
    slow = [sys.executable, "-c", "import time; time.sleep(5)"]
    assert run_command(slow, timeout=0.2) is None


def check_sane(m: Metrics) -> None:
    assert m.mem_total_bytes is not None and m.mem_total_bytes > 0
    for value in (m.mem_percent, m.swap_percent, m.disk_percent):
        assert value is not None and 0.0 <= value <= 100.0
    assert m.load1 is not None and m.load1 >= 0.0
    assert m.uptime_s is not None and m.uptime_s > 0
    assert m.net_rx_bytes is not None and m.net_rx_bytes >= 0
    assert m.cpu_percent is None or 0.0 <= m.cpu_percent <= 100.0
    assert m.temp_c is None or -50.0 < m.temp_c < 200.0
    assert isinstance(m.throttled, list)
    assert isinstance(m.disks.get("/tmp"), float)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux procfs")
def test_real_machine_smoke():
    c = Collector("/", mounts=("/", "/tmp"))
    for now in (0.0, 1.0):
        m, found = c.sample(now)
        check_sane(m)
        assert all(isinstance(p, str) for p in found)
    metrics_dict(m)  # JSON-ready: wire validation passed


def test_psutil_fallback_on_the_real_machine():
    c = Collector("/", mounts=("/", "/tmp"), use_psutil=True)
    c.sample(0.0)
    m, found = c.sample(1.0)
    check_sane(m)
    assert m.model is None
    assert isinstance(found, list)
