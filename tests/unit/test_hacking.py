"""docs/hacking.md stays true of the data path: the files a new cleansing step touches exist
(shown with the SYN+FIN/SYN+RST step, `tcpflags`) and are at most five, every step header under
bpf/include/steps/ is included by the program and named in its stage list, and the data-path
tree lists every header there is."""

from __future__ import annotations

import re

from xdpguard.core.kernel import abi

ROOT = abi.BPF_DIR.parent
HACKING = (ROOT / "docs" / "hacking.md").read_text()
INCLUDE = abi.BPF_DIR / "include"
PROGRAM = abi.PROGRAM_SOURCE.read_text()
STEPS = sorted(p.stem for p in (INCLUDE / "steps").glob("*.h"))


def _code(text: str) -> str:
    """C without its comments."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def step_files() -> list[str]:
    """The paths of the 'Adding a cleansing step' list: its `- `path`` lines."""
    section = HACKING.split("## Adding a cleansing step", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^- `([^`]+)`", section, re.M)


def test_the_list_of_files_a_step_touches_is_at_most_five_and_they_exist():
    files = step_files()
    assert 1 <= len(files) <= 5, files
    for f in files:
        path = ROOT / f.replace("<step>", "tcpflags")
        assert path.is_file(), f"docs/hacking.md names {f}, but {path.relative_to(ROOT)} does not exist"
    assert "bpf/include/steps/<step>.h" in files and "bpf/xdpguard.bpf.c" in files


def test_the_demonstration_step_is_in_every_listed_file():
    """The tcpflags step really touched what the list says: its name is in each file."""
    for f in step_files():
        text = (ROOT / f.replace("<step>", "tcpflags")).read_text()
        assert re.search(r"tcpflags|TCPFLAGS", text, re.I), f"{f} does not mention the tcpflags step"


def test_every_step_header_is_included_and_named_in_the_stage_list():
    assert len(STEPS) >= 10, STEPS
    code = _code(PROGRAM)
    for s in STEPS:
        assert code.count(f'#include "steps/{s}.h"') == 1, f"xdpguard.bpf.c must include steps/{s}.h once"
        header = _code((INCLUDE / "steps" / f"{s}.h").read_text())
        assert re.search(rf"\bstep_{s}\s*\(", header), f"steps/{s}.h must define step_{s}()"
        assert re.search(rf"\bstep_{s}\s*\(", code), f"the stage list (xdpguard.bpf.c) must call step_{s}()"


def test_every_step_called_has_its_header():
    called = set(re.findall(r"\bstep_(\w+)\s*\(", _code(PROGRAM)))
    assert called <= set(STEPS), f"steps called without a header of their own: {sorted(called - set(STEPS))}"


def test_the_data_path_tree_names_every_header():
    tree = HACKING.split("# The data path", 1)[1].split("```", 2)[1]
    for p in sorted(INCLUDE.rglob("*.h")):
        assert re.search(rf"^\s+{re.escape(p.name)}\s", tree, re.M), (
            f"docs/hacking.md's data-path tree does not list {p.relative_to(INCLUDE)}"
        )
