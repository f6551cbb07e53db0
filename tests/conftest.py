"""Test policy shared by every tier.

- Under CI=true no test may skip, whatever skipped it (`skipif` marker, `importorskip`, a bare
  `pytest.skip` in a test, a fixture or at module level): `pytest_runtest_logreport` and
  `pytest_collectreport` turn every skip into a failure that names the reason. A missing tool is
  fixed in scripts/setup.sh, not skipped past. (An expected failure, `xfail`, is not a skip.)
- `@pytest.mark.kernel` tests need root and bcc; tests that use the `lab` fixture need root.
  Without them they skip locally (and fail under CI=true).
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


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, 1-based line, "Skipped: reason")
        path, lineno, reason = longrepr
        return f"{reason} ({path}:{lineno})"
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI=true, turn a skipped report into a failed one, before any other plugin (the
    session's failure count, the terminal reporter, junit) sees it: hence hook wrappers, whose
    code before `yield` runs ahead of every plain (even tryfirst) implementation."""
    if not _under_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, which is a failure: {_skip_reason(report)}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_logreport(report: pytest.TestReport):
    _fail_skip(report)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_collectreport(report: pytest.CollectReport):
    _fail_skip(report)  # a module-level skip (importorskip, allow_module_level=True)
    return (yield)


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = _missing_requirement(item)
    if reason is not None:
        pytest.skip(reason)  # a failure under CI=true (_fail_skip)


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
