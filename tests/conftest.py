"""Test policy shared by every tier.

- `@pytest.mark.kernel` tests need root and bcc. Without them they skip locally, but under
  CI=true a skip would hide a broken setup, so it becomes a failure.
- Tests that use the `lab` fixture need root (same skip/fail policy).
- At session end, lab namespaces made by this pytest process and left behind are reported as an
  error (and removed, so the machine stays clean).
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator

import pytest

from xdpguard.lab.netns import NETNS_DIR, NS_PREFIX, Lab, leftover_namespaces


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@functools.cache
def _bcc_import_error() -> str | None:
    try:
        import bcc  # noqa: F401  (python3-bpfcc, seen through --system-site-packages)
    except Exception as exc:  # ImportError, or bcc failing to find libbcc
        return f"bcc cannot be imported ({exc}); run scripts/setup.sh"
    return None


def _missing_requirement(item: pytest.Item) -> str | None:
    needs_kernel = item.get_closest_marker("kernel") is not None
    needs_root = needs_kernel or "lab" in getattr(item, "fixturenames", ())
    if needs_root and os.geteuid() != 0:
        return "needs root"
    if needs_kernel:
        return _bcc_import_error()
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = _missing_requirement(item)
    if reason is None:
        return
    if _under_ci():
        pytest.fail(f"kernel test cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh `Lab`; closed after the test, which must leave none of its namespaces behind."""
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        created = the_lab.namespaces
        the_lab.close()
    left = [name for name in created if os.path.exists(os.path.join(NETNS_DIR, name))]
    if left:
        pytest.fail(f"lab.close() left namespaces behind: {left}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = leftover_namespaces(NS_PREFIX, pid=os.getpid())
    if not left:
        return
    for name in left:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"ERROR: test run left network namespaces behind (now removed): {', '.join(left)}"
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(message, red=True, bold=True)
    else:
        print(message)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
