"""Test policy shared by every tier.

- Under CI=true no test may skip, whatever skipped it (`skipif` marker, `importorskip`, a bare
  `pytest.skip` in a test, a fixture or at module level): `pytest_runtest_logreport` and
  `pytest_collectreport` turn every skip into a failure that names the reason. A missing tool is
  fixed in scripts/setup.sh, not skipped past. (An expected failure, `xfail`, is not a skip.)
- `@pytest.mark.kernel` tests need root and bcc; tests that use the `lab` fixture need root.
  Without them they skip locally (and fail under CI=true).
- At session end, lab namespaces made by this pytest process and left behind are reported as an
  error (and removed, so the machine stays clean).
- Every run ends with the time spent per tier (unit / bpf / integration / vm: the sum of each
  test's setup, call and teardown, module fixtures included) and the session's wall time; with
  $XDPGUARD_TIMES_FILE set, they are also appended there as a JSON line (scripts/test.sh adds up
  its two passes from it).
- Parallel runs: `--xg-pass parallel` keeps only the integration tests that may share the
  machine with others (no `serial` marker: they assert no flood rate, loss share or tight
  timing) and `--xg-pass serial` everything else. scripts/test.sh runs the first with pytest-xdist (-n; tests
  spread one by one, but a module with a module-scoped fixture stays on one worker:
  `pytest_xdist_make_scheduler`) and the second in one process. Each worker is its own process,
  so the pid in every lab name keeps its namespaces, state, pins and run directory apart.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import time
from collections import defaultdict
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


TIERS = ("unit", "bpf", "integration", "vm")
_tier_seconds: dict[str, float] = defaultdict(float)
_tier_tests: dict[str, set[str]] = defaultdict(set)
_session_start = time.monotonic()


def _tier(nodeid: str) -> str:
    parts = nodeid.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" and parts[1] in TIERS else "other"


@pytest.hookimpl(hookwrapper=True)  # old-style: Debian 12's pluggy 1.0 (the VM's) has no wrapper=True
def pytest_runtest_logreport(report: pytest.TestReport):
    _fail_skip(report)
    tier = _tier(report.nodeid)
    _tier_seconds[tier] += report.duration
    _tier_tests[tier].add(report.nodeid)
    yield


def _may_run_in_parallel(item: pytest.Item) -> bool:
    """The integration tests without the `serial` marker: they mostly wait. (Not the unit tier:
    tried, its CPU-bound tests beside them on 2 shared cores slowed them past their probes'
    timeouts. Not the bpf tier: it shares compiled programs for the whole session,
    tests/bpf/conftest.py, which every worker would compile again.)"""
    return _tier(item.nodeid) == "integration" and item.get_closest_marker("serial") is None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--xg-pass",
        choices=("all", "parallel", "serial"),
        default="all",
        help="run only the integration tests that may run in parallel (no `serial` marker), or only the rest",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    which = config.getoption("xg_pass")
    if which == "all":
        return
    keep = [item for item in items if _may_run_in_parallel(item) == (which == "parallel")]
    if len(keep) < len(items):
        kept = set(keep)
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = keep
    if which == "parallel":  # the longest work first: the modules that stay on one worker
        items.sort(key=lambda item: not _module_shares_a_fixture(str(item.path)))


_WIDER_FIXTURE = re.compile(r"""scope\s*=\s*["'](?:module|package|session)["']""")


@functools.cache
def _module_shares_a_fixture(path: str) -> bool:
    try:
        return _WIDER_FIXTURE.search(open(path).read()) is not None
    except OSError:
        return True


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: not there without it (the VM)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """The parallel pass: each test is its own unit of work, except that a module with a fixture
    set up once per module (a lab, an attach: a compile) keeps its tests on one worker, so that
    fixture is still set up once. (xdist's --dist loadgroup would do it with markers, but its
    regrouping does not take on pytest 9.)"""
    if config.getoption("xg_pass") != "parallel":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleFixturesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if _module_shares_a_fixture(str(config.rootpath / module)) else nodeid

    return ModuleFixturesTogether(config, log)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _session_start
    _session_start = time.monotonic()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _tier_seconds:
        return
    terminalreporter.section("time per tier")
    for tier in (*TIERS, "other"):
        if tier in _tier_seconds:
            terminalreporter.write_line(
                f"{tier:<12} {len(_tier_tests[tier]):>5} tests  {_tier_seconds[tier]:8.1f} s"
                f"  ({_tier_seconds[tier] / 60:.1f} min)"
            )
    wall = time.monotonic() - _session_start
    terminalreporter.write_line(
        f"{'session':<12} {'':>5}        {wall:8.1f} s  ({wall / 60:.1f} min, collection included)"
    )
    times_file = os.environ.get("XDPGUARD_TIMES_FILE")
    if times_file and not hasattr(config, "workerinput"):  # the controller's sum, not a worker's
        line = {
            "pass": config.getoption("xg_pass"),
            "workers": getattr(config.option, "numprocesses", None) or 0,
            "wall_s": round(wall, 1),
            "tiers": {t: [len(_tier_tests[t]), round(_tier_seconds[t], 1)] for t in _tier_seconds},
        }
        with open(times_file, "a") as f:
            f.write(json.dumps(line) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_collectreport(report: pytest.CollectReport):
    _fail_skip(report)  # a module-level skip (importorskip, allow_module_level=True)
    yield


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
