"""bpf-tier fixtures: one compile per build.

bcc's compile of the program is the tier's biggest fixed cost (~5 s on an idle host, 25-30 s on
the loaded 2-core CI machine, 80-190 s under TCG). `shared_bed(defines)` hands a module the
TestBed of that build, compiled once per session and reset (`TestBed.reset`: every map as a fresh
compile holds it) each time a module asks; modules with the same -D defines share one compile.
A module that needs two live programs of one build at once still makes its own TestBed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from xdpguard.core.testrun import TestBed


@pytest.fixture(scope="session")
def shared_bed() -> Iterator[Callable[..., TestBed]]:
    beds: dict[tuple, TestBed] = {}

    def get(defines: dict[str, int] | None = None) -> TestBed:
        key = tuple(sorted((defines or {}).items()))
        bed = beds.get(key)
        if bed is None:
            bed = beds[key] = TestBed(defines)
        else:
            bed.reset()
        return bed

    try:
        yield get
    finally:
        for bed in beds.values():
            bed.close()
