"""docs/operations.md "systemd" step by step: ``deploy/install.sh`` into a temporary prefix, from a checkout that
is deleted afterwards, then ``systemd-analyze verify`` on the units it installed."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, scrubbed_environ

pytestmark = pytest.mark.integration

UNITS = ("alert-worker.service", "alert-worker@.service", "alert-worker-sweep.service", "alert-worker-sweep.timer")
_NOT_SHIPPED = shutil.ignore_patterns(".venv", ".git", "__pycache__", "tests", "bench", "*.egg-info", "build")


def test_the_install_script_gives_a_venv_that_needs_no_checkout_and_units_systemd_accepts(tmp_path: Path) -> None:
    """The package is copied into the venv (works with the checkout gone, as under ProtectHome=true), the env
    file is created with its directory (``install -D``, mode 0640), and every installed unit verifies."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    checkout = tmp_path / "home" / "someone" / "alert-worker"
    shutil.copytree(REPO, checkout, ignore=_NOT_SHIPPED)
    prefix, etc, units = tmp_path / "opt", tmp_path / "etc" / "alert-worker", tmp_path / "units"
    env = {
        **scrubbed_environ(),
        "PREFIX": str(prefix),
        "ETC": str(etc),
        "UNITS": str(units),
        "OWNER_GROUP": "",  # no `alert` group on a test machine; root:alert is the default
        "PYTHON": sys.executable,  # the interpreter of the venv the test runs in: a venv can be made from it
    }
    done = subprocess.run(
        ["sh", str(checkout / "deploy" / "install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(checkout.parent.parent)  # nothing may point back at the checkout

    where = subprocess.run(
        [str(prefix / "venv" / "bin" / "python"), "-c", "import alert_worker; print(alert_worker.__file__)"],
        env=scrubbed_environ(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert where.stdout.startswith(str(prefix / "venv"))
    version = subprocess.run(
        [str(prefix / "venv" / "bin" / "alert-worker"), "--version"],
        env=scrubbed_environ(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert version.returncode == 0 and version.stdout.startswith("alert-worker ")

    env_file = etc / "alert-worker.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    assert env_file.read_text() == (REPO / "deploy" / "alert-worker.env.example").read_text()

    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)
    (units / "alert-worker@1.service").symlink_to(units / "alert-worker@.service")
    for name in UNITS:
        assert "/opt/alert-worker" not in (units / name).read_text()
    verify = subprocess.run(
        [analyze, "verify", *(str(units / n) for n in UNITS if "@." not in n), str(units / "alert-worker@1.service")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
