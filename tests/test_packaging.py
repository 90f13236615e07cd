"""The four folders install as fedbus.* subpackages, never as bare top-level names."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return next(out.glob("fedbus-*.whl"))


def test_wheel_holds_only_the_fedbus_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"fedbus"}
    for package in ("broker", "node", "aggregator", "kernels"):
        assert f"fedbus/{package}/__init__.py" in names


def test_wheel_ships_the_broker_config_as_a_file(wheel: Path) -> None:
    shipped = zipfile.ZipFile(wheel).read("fedbus/broker/mosquitto.conf")
    assert shipped == (REPO / "mosquitto.conf").read_bytes()


def test_console_script_points_at_the_dispatcher(wheel: Path) -> None:
    entry_points = next(
        n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt")
    )
    assert "fedbus = fedbus.broker.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
