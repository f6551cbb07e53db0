"""The interface record's keys have one owner (issue 26): state.py's typed fields. A module reads
and writes a field with state.get/state.put, never by spelling its key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from xdpguard.core.nat import forward
from xdpguard.core import state
from xdpguard.core.errors import UserError
from xdpguard.core.l7 import engine
from xdpguard.core.model.thresholds import EventConfig, Thresholds

CORE = Path(__file__).resolve().parent.parent.parent / "xdpguard" / "core"
# the writer's modules still spell keys themselves (forward.py 15 places, reconcile.py 11): its step
# moves them onto state's fields
NOT_YET = {"core/nat/forward.py", "core/reconcile.py"}


def test_every_field_is_in_the_checked_shape():
    assert {f.key for f in state.FIELDS} <= set(state.STATE_SHAPE.keys)
    assert len({f.key for f in state.FIELDS}) == len(state.FIELDS)


def test_the_keys_the_writers_modules_still_spell_are_the_fields():
    assert forward.FORWARD_KEY == state.FORWARD.key
    assert forward.HEALTH_KEY == state.FORWARD_HEALTH.key
    assert forward.SYSCTL_KEY == state.FORWARD_SYSCTL_SAVED.key
    assert forward.CONNLIMIT_KEY == state.CONNLIMITS.key
    assert forward.HTTP_KEY == engine.HTTP_KEY == state.HTTP.key


def _spelled_keys(source: str, name: str = "<src>") -> list[str]:
    """Where a record (st, new_st, ...) is indexed by a key spelled out: a field's string, or a
    module's *_KEY / KEY constant (st["levels"], st.get(forward.HEALTH_KEY), st.setdefault(KEY, {}))."""
    keys = {f.key for f in state.FIELDS}
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Subscript):
            obj, key = node.value, node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "setdefault", "pop")
            and node.args
        ):
            obj, key = node.func.value, node.args[0]
        else:
            continue
        if not (isinstance(obj, ast.Name) and obj.id in ("st", "st_now", "new_st", "old_st", "record")):
            continue
        spelled = (
            (isinstance(key, ast.Constant) and key.value in keys)
            or (isinstance(key, ast.Attribute) and (key.attr == "KEY" or key.attr.endswith("_KEY")))
            or (isinstance(key, ast.Name) and (key.id == "KEY" or key.id.endswith("_KEY")))
        )
        if spelled:
            found.append(f"{name}:{node.lineno}")
    return found


def test_the_key_scan_sees_a_spelled_key():
    assert _spelled_keys(
        'st["levels"] = {}\nx = st.get(forward.HEALTH_KEY)\nst.setdefault(KEY, {})\ny = state.get(st, state.LEVELS)\n'
    ) == ["<src>:1", "<src>:2", "<src>:3"]


def test_no_other_module_spells_a_key_of_the_record():
    found = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent).as_posix()
        if rel != "core/state.py" and rel not in NOT_YET:
            found += _spelled_keys(path.read_text(), rel)
    assert found == []


def test_typed_round_trips(tmp_path, monkeypatch):
    st: dict = {}
    cfg = EventConfig(
        Thresholds(drop_pps=5), {"198.18.0.1": Thresholds(pps=7, reasons={"blocklist": (1.0, 2.0)})}, 3.0, None
    )
    state.put(st, state.ATTACK, cfg)
    assert st["attack"]["default"]["drop_pps"] == 5 and state.get(st, state.ATTACK) == cfg
    assert state.get({}, state.ATTACK) == EventConfig()  # absent: the defaults
    state.put(st, state.LEVELS, {"198.18.0.1": "strict"})
    assert state.get(st, state.LEVELS) == {"198.18.0.1": "strict"}
    assert state.get(None, state.MITIGATIONS) == {"active": [], "lifted": [], "suppressed": {}}
    # what put wrote is what read_state checks: a record of the wrong shape is refused
    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path))
    iface = state.Iface("xgmo0", 1, state.netns_key())
    state.write_state(iface, st)
    assert state.get(state.read_state(iface), state.ATTACK) == cfg
    st["levels"] = ["strict"]
    state.write_state(iface, st)
    with pytest.raises(UserError, match="levels"):
        state.read_state(iface)
