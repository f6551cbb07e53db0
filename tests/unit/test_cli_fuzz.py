"""Fuzzing the whole click tree: every verb and every option of `xdpguard.cli.main.cli` (walked
recursively, so a new verb is fuzzed without editing this file) gets hostile values — inf, nan,
1e999, huge, negative, empty, NUL, invalid UTF-8 (lone surrogates, what os.fsdecode makes of
it), line breaks, very long strings, directories, symlinks, devices, missing paths, files with
a NUL byte or not UTF-8 — through `run(argv)`, what the console script calls.

Every core function the CLI reaches is faked (recording its arguments, then failing with a
UserError, so nothing of the machine is touched); the pure parts (vocab, policy, config.load)
are real. The contract checked for every invocation:

- no traceback: run() returns, whatever the input;
- exit 0 (help) or 2; on 2 exactly one stderr line `xdpguard: error: …` (one per problem for
  a config file: every line so prefixed);
- the fakes saw only validated values: finite floats, UTF-8 text without control characters;
- state unchanged: the files of the test's world (lists, configs, symlink targets, output
  paths) are as before, and on exit 2 nothing was recorded into the desired-state store.

Two passes: an exhaustive one (each option of each verb × each hostile value, the others
valid) and a hypothesis one (1000 random combinations; derandomized, no database), both
in-process: about 30 s together on an idle machine.

Then (issue 24) two fuzzers that run the real core with the kernel faked at its edge: `apply -f`
with generated hostile TOML, and every command that runs without a kernel against hostile
interface state files; each prints one report line (inputs tried, tracebacks, promise
violations) and fails unless both counts are 0. About 25 s together.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import random
import re
import stat
from dataclasses import fields, is_dataclass
from pathlib import Path

import click
import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdpguard.cli import main as cli_main
from xdpguard.cli.main import cli, run
from xdpguard.core.observe import capture, doctor, events, metrics, stats
from xdpguard.core.verbs import cleansing, imperative
from xdpguard.core import policy, protection, reconcile, state, store
from xdpguard.core.model.desired import AddressSpec, Desired, InterfaceSpec
from xdpguard.core.desired.load import (
    load,
    ConfigError,
    loads,
    _DAEMON_KEYS,
    _CLUSTER_KEYS,
    _BGP_KEYS,
    _IFACE_KEYS,
    _ADDR_KEYS,
    _FILTER_KEYS,
    _FORWARD_KEYS,
    _EVENT_KEYS,
    _LIMIT_KEYS,
    _SYN_KEYS,
    CONNLIMIT_KEYS,
)
from xdpguard.core.daemon import reconciler as daemon
from xdpguard.core.kernel import dataplane
from xdpguard.core.nat import forward, health
from xdpguard.core.errors import UserError
from xdpguard.core.verbs import watermarkrules  # keygen writes a file: faked like every verb that writes
from xdpguard.lab import attack as lab_attack
from xdpguard.lab import probe as lab_probe
from xdpguard.lab import cluster as lab_cluster
from xdpguard.lab import topology

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0 (NUL, line breaks, ESC, …), DEL, C1

# ---- the click tree ----


def walk(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            out += walk(cmd.commands[name], path + (name,))
    return out


TREE = walk(cli)
LEAVES = [(p, c) for p, c in TREE if not isinstance(c, click.Group) or c.invoke_without_command]


def params(cmd: click.Command) -> list[click.Parameter]:
    return [p for p in cmd.params if p.name != "help" and not (isinstance(p, click.Option) and p.is_eager)]


def test_tree_is_walked():
    """The walk finds the verbs (a broken walk would fuzz nothing and pass)."""
    names = {" ".join(p) for p, _ in LEAVES}
    assert {
        "attach",
        "block add",
        "block load",
        "ban add",
        "limit set",
        "syn set",
        "events threshold set",
        "capture",
        "run",
        "apply",
        "export",
        "filter add",
        "forward add",
    } <= names
    assert len(LEAVES) >= 60


# ---- the world: files and paths the values point at ----


class World:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(exist_ok=True)
        (root / "dir").mkdir(exist_ok=True)
        (root / "list.txt").write_text("198.18.0.0/24\n2001:db8::/48\n")
        (root / "nul.txt").write_bytes(b"198.18.0.9\n\0\n")
        (root / "latin1.txt").write_bytes(b"198.18.0.9 # caf\xe9\n")
        (root / "good.toml").write_text('[[interface]]\nname = "xgp0"\nprotect = ["198.18.0.2"]\n')
        (root / "bad.toml").write_text(
            '[[interface]]\nname = "xgp0"\nprotect = ["nope", "198.18.0.999"]\n'
            '[interface.events]\nhook = "\'x"\ndrop_pps = "inf"\n'
        )
        (root / "devzero.toml").write_text(
            '[[interface]]\nname = "xgp0"\nprotect = ["198.18.0.2"]\nblock_files = ["/dev/zero"]\n'
        )  # was read forever
        (root / "victim").write_text("do not truncate me\n")
        for name, target in (("link-to-victim", "victim"), ("dangling", "missing")):
            if not (root / name).is_symlink():
                (root / name).symlink_to(root / target)
        self.hook = root / "hook.sh"
        self.hook.write_text("#!/bin/sh\nexit 0\n")
        self.hook.chmod(0o700)

    def p(self, name: str) -> str:
        return str(self.root / name)

    def snapshot(self) -> dict[str, tuple]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                full = Path(dirpath, n)
                st_ = full.lstat()
                if stat.S_ISLNK(st_.st_mode):
                    out[str(full)] = ("link", os.readlink(full))
                elif stat.S_ISREG(st_.st_mode):
                    out[str(full)] = ("file", hashlib.sha256(full.read_bytes()).hexdigest(), st_.st_mode)
                else:
                    out[str(full)] = ("other", st_.st_mode)
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("fuzzworld"))


def hostile(w: World) -> list[str]:
    return [
        "inf",
        "-inf",
        "nan",
        "NaN",
        "1e999",
        "-1e999",
        "1e308G",
        "-1",
        "-0",
        "0",
        "99999999999999999999999999",
        "1" * 400,
        "",
        " ",
        "\x00",
        "a\x00b",
        "\udcff",
        "198.18.0.1\udcfe",
        "\udba6x",
        "\ud800\udc00",
        "\n",
        "a\nb",
        "x" * 5000,
        "'x",
        "/bin/true\n; x",
        "\x1b[2J",
        "a\x85b",
        "a\x7f",
        "a\tb",
        "a\rb",
        "-",
        "--",
        "%s%n",
        "{}",
        "0x10",
        "1_000",
        "10k",
        "1.5M",
        "-5k",
        ":0",
        ":65536",
        "unresolvable.invalid:1",
        "[::1]",
        "198.18.0.0/33",
        "2001:db8::1",
        "tcp:0-70000",
        "udp:53",
        "syn,!ack",
        "zz",
        "drop=inf",
        w.p("dir"),
        w.p("link-to-victim"),
        w.p("dangling"),
        w.p("victim"),
        w.p("missing/x"),
        "/proc/nonexist/x",
        "/dev/zero",
        "/dev/null",
        w.p("nul.txt"),
        w.p("latin1.txt"),
        w.p("bad.toml"),
        w.p("devzero.toml"),
        str(w.hook),
    ]


# Values that pass validation, by parameter name (the fuzzed parameter gets a hostile value,
# the other required ones these).
def valid(w: World, p: click.Parameter) -> str:
    by_name = {
        "iface": "xgp0",
        "cidrs": "198.18.0.0/24",
        "addrs": "198.18.0.9",
        "protect": "198.18.0.2",
        "ports": "80",
        "to": "198.51.100.10:80",
        "ttl": "60",
        "threshold": "100",
        "file": w.p("list.txt"),
        "path": w.p("fresh.pcapng"),
        "index": "1",
        "kind": "udp-flood",
        "action": "drop",
        "proto": "tcp",
    }
    if p.name in by_name:
        return by_name[p.name]
    if isinstance(p.type, click.Choice):
        return str(p.type.choices[0])
    if isinstance(p.type, click.types.IntRange):
        return str(p.type.min if p.type.min is not None else 1)
    return "1"


def option_name(p: click.Option) -> str:
    return max(p.opts, key=len)


def base_argv(w: World, path: tuple[str, ...], cmd: click.Command, skip: click.Parameter | None = None) -> list[str]:
    """The verb with its required parameters given valid values (except `skip`)."""
    argv = list(path)
    for p in params(cmd):
        if p is skip or not p.required:
            continue
        if isinstance(p, click.Argument):
            argv.append(valid(w, p))
        else:
            argv += [option_name(p), valid(w, p)]
    return argv


def with_value(w: World, path, cmd, p: click.Parameter, value: str) -> list[str]:
    argv = base_argv(w, path, cmd, skip=p)
    if isinstance(p, click.Argument):
        # arguments are positional: put ours where it belongs among the required ones
        args = [q for q in params(cmd) if isinstance(q, click.Argument)]
        pos = len(path) + sum(1 for q in args[: args.index(p)] if q.required)
        argv.insert(pos, value)
        return argv
    if getattr(p, "is_flag", False) and not p.secondary_opts:
        return argv + [option_name(p)]  # a flag takes no value: the value becomes an extra argument
    return argv + [f"{option_name(p)}={value}"]


# ---- the fake core ----

FAKED = {
    imperative: [
        "list_add",
        "list_del",
        "list_load",
        "ports_change",
        "set_level",
        "connlimit_set",
        "connlimit_clear",
        "set_event_config",
        "limit_set",
        "limit_clear",
        "proto_change",
        "reflection_change",
        "filter_add",
        "filter_del",
        "syn_set",
        "monitor_change",
        "fragments_set",
        "forward_add",
        "forward_delete",
    ],
    protection: ["pick_iface", "open_guard", "list_show", "status", "ports_list", "upgrade", "sweep_expired"],
    cleansing: [
        "limit_show",
        "proto_show",
        "reflection_list",
        "filter_list",
        "syn_show",
        "monitor_show",
        "fragments_show",
        "ban_list",
        "ban_add",
        "ban_del",
    ],
    reconcile: ["attach", "detach", "apply_file", "diff_file", "export", "protection_ifaces"],
    state: ["require_root", "resolve_iface", "write_durably"],
    events: ["set_config", "load_config", "read_log", "log_path", "DetectionLoop", "AttackTracker"],
    capture: ["capture"],
    forward: ["show"],
    doctor: ["gather"],
    stats: ["Collector"],
    daemon: ["Reconciler"],
    health: ["run"],
    metrics: ["serve"],
    dataplane: ["render_source"],
    topology: ["up", "down", "status"],
    lab_cluster: ["up", "down", "exists", "status"],
    lab_attack: ["run"],
    lab_probe: ["in_lab"],
    watermarkrules: ["enable", "disable", "rotate", "show", "keygen"],
}


# Lookups that change nothing answer (so the verb goes on to what it would change); every
# other fake records and fails.
ANSWERS = {
    "xdpguard.core.protection.pick_iface": lambda name=None: name or "xgp0",
    "xdpguard.core.state.resolve_iface": lambda name: state.Iface(name, 7, "net-1"),
    "xdpguard.core.state.require_root": lambda: None,
}


class FakeCore:
    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.recorded: list[tuple] = []
        for mod, names in FAKED.items():
            for name in names:
                assert hasattr(mod, name), f"{mod.__name__}.{name} is gone: update FAKED"
                monkeypatch.setattr(mod, name, self._fake(f"{mod.__name__}.{name}"))

    def _fake(self, qual: str):
        def fake(*args, **kwargs):
            self.calls.append((qual, args, kwargs))
            if qual in ANSWERS:
                return ANSWERS[qual](*args, **kwargs)
            if qual.endswith(("apply_file", "diff_file")):
                load(args[0])  # the real loader: its problems are part of the contract
            raise UserError(f"fake core reached: {qual}")

        return fake


def unvalidated(v, where: str = "") -> list[str]:
    """What in a value handed to the core was not validated: non-finite floats, text that is
    not UTF-8 or has a control character (NUL, a line break, ESC, …)."""
    if isinstance(v, bool) or v is None or isinstance(v, int):
        return []
    if isinstance(v, float):
        return [] if math.isfinite(v) else [f"{where}: {v!r}"]
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return [f"{where}: not UTF-8 {v!r}"]
        return [f"{where}: control character in {v!r}"] if _CONTROL.search(v) else []
    if isinstance(v, (list, tuple, set, frozenset)):
        return [x for i, e in enumerate(v) for x in unvalidated(e, f"{where}[{i}]")]
    if isinstance(v, dict):
        return [x for k, e in v.items() for x in unvalidated(k, f"{where}.key") + unvalidated(e, f"{where}[{k!r}]")]
    if is_dataclass(v) and not isinstance(v, type):
        return [x for f in fields(v) for x in unvalidated(getattr(v, f.name), f"{where}.{f.name}")]
    if callable(v):  # e.g. set_config's update function, run's report callbacks
        return []
    return []


@pytest.fixture
def core(monkeypatch, world, tmp_path, recorded_calls) -> FakeCore:
    for var, sub in (("XDPGUARD_BPFFS", "bpffs"), ("XDPGUARD_STATE_DIR", "state"), ("XDPGUARD_RUN_DIR", "run")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("XDPGUARD_CONFIG", world.p("good.toml"))
    monkeypatch.delenv("XDPGUARD_LOCK_TIMEOUT", raising=False)
    # no DNS in a unit test: names resolve when they are an address or localhost
    import socket

    from xdpguard.core.model import vocab

    def resolve(host, port):
        if host != "localhost":
            for fam in (socket.AF_INET, socket.AF_INET6):
                try:
                    socket.inet_pton(fam, host)
                    return
                except OSError:
                    pass
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(vocab, "_resolve", resolve)
    fake = FakeCore(monkeypatch)
    fake.recorded = recorded_calls  # what would be recorded into the desired-state store (conftest)
    return fake


def invoke(core: FakeCore, world: World, argv: list[str], env: dict | None = None) -> None:
    """One run(argv) in-process, and the whole contract on its result."""
    before = world.snapshot()
    n_calls, n_recorded = len(core.calls), len(core.recorded)
    runner = CliRunner()
    with runner.isolation(env=env) as (_out, err, *_):
        try:
            code = run(argv)
        except BaseException as exc:  # a traceback is what must never happen
            raise AssertionError(f"run({argv!r}) raised {type(exc).__name__}: {exc}") from exc
        stderr = err.getvalue().decode("utf-8", "replace")
    lines = stderr.splitlines()
    assert code in (0, 2), (argv, code, stderr)
    if code == 0:
        assert not stderr, (argv, stderr)
    else:
        assert lines and all(ln.startswith("xdpguard: error: ") for ln in lines), (argv, stderr)
        if len(lines) > 1:  # only a config file's problems come one per line
            assert argv[0] in ("apply", "diff", "run", "cluster"), (argv, stderr)  # the commands that read a config
    for qual, args, kwargs in core.calls[n_calls:]:
        bad = unvalidated(list(args), qual) + unvalidated(kwargs, qual)
        assert not bad, (argv, bad)
    assert world.snapshot() == before, (argv, "files changed")
    if code == 2:
        assert len(core.recorded) == n_recorded, (argv, "recorded into the store", core.recorded[n_recorded:])


# ---- pass 1: every option of every verb × every hostile value ----


def cases(w: World) -> list[list[str]]:
    out = []
    for path, cmd in LEAVES:
        out.append(list(path) + ["--help"])
        out.append(base_argv(w, path, cmd))
        for p in params(cmd):
            values = hostile(w)
            if isinstance(p, click.Option) and p.is_flag and not p.secondary_opts:
                values = values[:1]
            for v in values:
                out.append(with_value(w, path, cmd, p, v))
    return out


def test_every_option_with_every_hostile_value(core, world):
    all_cases = cases(world)
    assert len(all_cases) > 5000
    for argv in all_cases:
        invoke(core, world, argv)
    reached = {q for q, _, _ in core.calls}
    # the valid invocations do reach the core: the fakes are wired (else the test proves nothing)
    assert {
        "xdpguard.core.verbs.imperative.list_add",
        "xdpguard.core.verbs.imperative.limit_set",
        "xdpguard.core.observe.capture.capture",
        "xdpguard.core.reconcile.apply_file",
    } <= reached


# ---- pass 2: random combinations ----

TEXT_ANY = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)


@st.composite
def argvs(draw, w: World):
    path, cmd = draw(st.sampled_from(LEAVES))
    pool = st.one_of(
        st.sampled_from(hostile(w)),
        TEXT_ANY,
        st.integers(-(2**70), 2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )
    argv = list(path)
    for p in params(cmd):
        if isinstance(p, click.Argument):
            n = draw(st.integers(0 if not p.required else 1, 2 if p.nargs == -1 else 1))
            argv += [draw(st.one_of(st.just(valid(w, p)), pool)) for _ in range(n)]
        elif draw(st.booleans()):
            if p.is_flag and not p.secondary_opts:
                argv.append(option_name(p))
            else:
                for _ in range(draw(st.integers(1, 2 if p.multiple else 1))):
                    argv += [option_name(p), draw(st.one_of(st.just(valid(w, p)), pool))]
    return argv


@settings(
    max_examples=1000,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_combinations(core, world, data):
    invoke(core, world, data.draw(argvs(world)))


# ---- the environment ----


@pytest.mark.parametrize("var", sorted(cli_main.ENVIRONMENT))
@pytest.mark.parametrize("value", ["\udcff", "/tmp/x\udcfe"])  # (an environment cannot hold a NUL)
def test_environment_is_text(core, world, var, value):
    invoke(core, world, ["block", "list"], env={var: value})


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-1", "1e999", "90000"])
def test_lock_timeout_is_one_line(value, monkeypatch):
    monkeypatch.setenv("XDPGUARD_LOCK_TIMEOUT", value)
    with pytest.raises(UserError, match="XDPGUARD_LOCK_TIMEOUT"):
        state.lock_timeout_s()


def test_options_are_not_read_from_the_environment(core, world):
    """No auto_envvar_prefix: XDPGUARD_ATTACH_FORCE or XDPGUARD_RUN_METRICS change nothing."""
    assert "auto_envvar_prefix" not in (cli.context_settings or {})
    invoke(
        core,
        world,
        ["attach", "xgp0", "--protect", "198.18.0.2"],
        env={"XDPGUARD_ATTACH_FORCE": "1", "XDPGUARD_ATTACH_MODE": "skb"},
    )
    qual, args, kwargs = core.calls[-1]
    assert qual.endswith("reconcile.attach") and kwargs["force"] is False and kwargs["mode"] == "auto"


# ---- what the listed crashes say now ----


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["limit", "set", "--src-pps", "inf"], "--src-pps"),
        (["ban", "add", "198.18.0.9", "--ttl", "1e999"], "--ttl"),
        (["syn", "set", "--threshold", "inf"], "--threshold"),
        (["block", "add", "\udcff"], "not valid UTF-8"),
        (["block", "add", "198.18.0.9", "--ttl", "nan"], "--ttl"),
        (["run", "--metrics", "unresolvable.invalid:1"], "cannot resolve"),
        (["events", "threshold", "set", "--hook", "'x"], "--hook"),
        (["events", "threshold", "set", "--hook", "no-such-program-xg"], "not an executable program"),
    ],
)
def test_listed_crashes_are_one_line(core, world, capsys, argv, needle):
    assert run(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("xdpguard: error: ") and needle in err[0], err
    assert not core.calls  # refused before the core


def test_capture_into_a_directory_or_nowhere(core, world, capsys):
    for target in (world.p("dir"), "/proc/nonexist/x"):
        assert run(["capture", "xgp0", "-w", target]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("xdpguard: error: ") and "cannot write" in line
    assert not core.calls


def test_valid_values_reach_the_core_converted(core, world):
    """The other half: what is valid passes, converted by the one vocabulary."""
    invoke(core, world, ["limit", "set", "--src-pps", "1.5k", "--ban", "60"])
    invoke(core, world, ["block", "add", "198.18.0.0/24", "--ttl", "2.5"])
    invoke(core, world, ["events", "threshold", "set", "--hook", f"{world.hook} --flag"])
    lim = core.calls[0][1][1]
    assert (lim.src_pps, lim.ban_s) == (1500, 60)
    assert core.calls[1][1] == ("block", None, ["198.18.0.0/24"], 2.5)
    assert core.calls[-1][0].endswith("imperative.set_event_config")  # the hook was accepted


# ---- capture -w and export -o: no symlink followed, nothing truncated unless asked ----


def test_create_output_refuses_symlinks_and_existing_files(world, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "link").symlink_to(victim)
    for target, msg in ((tmp_path / "link", "symbolic link"), (victim, "give --overwrite")):
        with pytest.raises(UserError, match=msg):
            capture.create_output(target)
    with pytest.raises(UserError, match="symbolic link"):
        capture.create_output(tmp_path / "link", overwrite=True)
    assert victim.read_text() == "keep"
    os.close(capture.create_output(victim, overwrite=True))  # asked: truncated
    assert victim.read_text() == ""
    fd = capture.create_output(tmp_path / "new")
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600


def test_export_o_creates_refuses_and_overwrites(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reconcile, "export", lambda: reconcile.ExportResult("# state\n", {}))
    out = tmp_path / "x.toml"
    assert run(["export", "-o", str(out)]) == 0
    assert out.read_text() == "# state\n"
    out.write_text("mine\n")
    assert run(["export", "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert run(["export", "-o", str(link)]) == 2
    assert not (tmp_path / "elsewhere").exists()
    assert run(["export", "-o", str(out), "--overwrite"]) == 0
    assert out.read_text() == "# state\n"


# ---- hooks never stop detection ----


def _event() -> events.AttackEvent:
    return events.AttackEvent(id="e1", iface="xgp0", protected="198.18.0.2", start=1.0)


@pytest.mark.parametrize("command", ["'x", "/nonexistent/hook", "/etc/hostname", "a\x00b"])
def test_a_broken_hook_is_recorded_not_raised(command):
    h = events.HookRunner(command)
    h("start", _event())
    h("end", _event())
    h.reap(wait=True)
    assert h.error and "not run" in h.error


def test_config_loader_validates_the_hook(world):
    """A hook that does not split is a problem of the file; a program that is missing now only a
    warning (the store is read with the same loader: a program removed later must not make it
    unloadable)."""
    with pytest.raises(ConfigError) as exc:
        load(world.p("bad.toml"))
    assert any("events.hook" in p and "No closing quotation" in p for p in exc.value.problems), exc.value.problems
    base = '[[interface]]\nname = "xgp0"\nprotect = ["198.18.0.2"]\n[interface.events]\n'
    d, warnings = loads(base + 'hook = "/nonexistent/hook --x"\n', "t.toml")
    assert d.interfaces[0].events.hook == "/nonexistent/hook --x"
    assert any("events.hook" in w and "not an executable program" in w for w in warnings), warnings
    with pytest.raises(ConfigError, match="absolute path"):
        loads(base + 'hook = "./relative.sh"\n', "t.toml")


def test_environment_lists_every_variable_the_code_reads():
    """ENVIRONMENT (printed by --help, checked as text by run) names each variable the code
    reads; XDPGUARD_EVENT_* are only set, for hooks."""
    import re

    root = Path(cli_main.__file__).resolve().parents[1]
    read = set()
    for f in root.rglob("*.py"):
        read |= set(re.findall(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z_]+)["']""", f.read_text()))
        read |= set(re.findall(r"""os\.getenv\(\s*["']([A-Z_]+)["']""", f.read_text()))
    assert read and read <= set(cli_main.ENVIRONMENT), read - set(cli_main.ENVIRONMENT)


def test_detection_reports_a_broken_hook_and_goes_on(monkeypatch):
    """The sink calls the hook of an event; a broken hook is a problem `run` prints, the event
    is still reported (and detection goes on)."""
    monkeypatch.setattr(events, "append_log", lambda ev: None)
    loop = events.DetectionLoop()
    loop.hooks["xgp0"] = events.HookRunner("/nonexistent/hook")
    reported = []
    loop.report = lambda phase, ev: reported.append(phase)
    loop._sink("xgp0")("start", _event())
    assert reported == ["start"]
    assert "not run" in loop.problems()["xgp0"]


# ---- issue 24: `apply -f` with hostile TOML, and hostile interface state files ----
#
# Both run the real CLI and the real core down to the kernel, which is faked at its edge:
# `dataplane.query` says xdpguard's program is attached, `protection.Guard.open` gives a guard
# whose maps hold nothing, `reconcile.realise` records what it was asked to realise. The store
# (desired.toml, its meta and lists) and the state files are real, under a private state dir.
# The contract, counted and printed as one report line per fuzzer:
# - no traceback;
# - exit 0 or 2; on 2 every stderr line is one `xdpguard: error: …` line (no control character);
# - on 2 the store and the state file are byte for byte as before;
# - on 0 (apply) the store loads back, equal to what the loader makes of the file.

REAL_RECONCILE = {n: getattr(reconcile, n) for n in ("record", "forget")}  # before conftest fakes them
FZ_IF = "xgt0"
FZ_ADDR = "198.18.0.2"


class _EmptyGuard:
    """A guard of a program whose maps hold nothing (policy readers are faked to defaults)."""

    def __init__(self, iface):
        self.iface = iface
        self.maps: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def open_ports(self):
        return {}

    def protected_addrs(self):
        return [ipaddress.ip_address(FZ_ADDR)]

    def read_address_policy(self, a):
        return policy.AddressPolicy()

    def read_global_policy(self):
        return policy.GlobalPolicy()

    def read_port_limits(self):
        return {}

    def geo_of(self, addr):
        return None

    def watermarks(self):
        return {}

    def realise_watermarks(self, addresses):
        return []

    def read_verify_settings(self):
        return policy.VerifySettings()

    def write_verify_settings(self, v):
        pass

    def fastfwd_via(self):
        return None


@pytest.fixture
def kernel_edge(monkeypatch, tmp_path):
    """The real core with the kernel faked at its edge; returns what realise() was asked."""
    for var, sub in (("XDPGUARD_BPFFS", "bpffs"), ("XDPGUARD_STATE_DIR", "state"), ("XDPGUARD_RUN_DIR", "run")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("XDPGUARD_CONFIG", raising=False)
    for name, fn in REAL_RECONCILE.items():
        monkeypatch.setattr(reconcile, name, fn)
    monkeypatch.setattr(state, "require_root", lambda: None)
    monkeypatch.setattr(state, "resolve_iface", lambda name: state.Iface(name, 7, state.netns_key()))
    monkeypatch.setattr(
        dataplane, "query", lambda ifindex: dataplane.XdpAttachment(1, "skb", dataplane.PROGRAM_KERNEL_NAME)
    )
    monkeypatch.setattr(protection.Guard, "open", staticmethod(lambda iface: _EmptyGuard(iface)))
    monkeypatch.setattr(reconcile, "_permanent", lambda g, which: frozenset())
    monkeypatch.setattr(reconcile, "management_addresses", lambda: set())
    realised: list = []
    monkeypatch.setattr(
        reconcile, "realise", lambda spec: realised.append(spec) or reconcile.RealiseResult(spec.name, "changed", [])
    )
    monkeypatch.setattr(reconcile, "_detach_quietly", lambda name: realised.append(("detach", name)) or [])
    monkeypatch.setattr(
        imperative,
        "list_add",
        lambda which, ifname, cidrs, ttl=None, force=False: protection.ListChangeResult(
            ifname or FZ_IF, which, "add", len(cidrs), 0, 0, [], []
        ),
    )
    monkeypatch.setattr(
        imperative,
        "ports_change",
        lambda ifname, proto, ports, protected, open_, **k: protection.PortResult(
            ifname or FZ_IF, "open" if open_ else "close", 1, []
        ),
    )
    monkeypatch.setattr(
        protection,
        "status",
        lambda name: [
            protection.StatusResult(FZ_IF, 7, 1, "skb", [FZ_ADDR], False, {"block": 0, "allow": 0}, [], {}, True)
        ],
    )
    return realised


def _state_record() -> dict:
    """A record as attach writes it, with every kind of entry the other writers add."""
    flt = {
        "proto": "udp",
        "sport": [0, 65535],
        "dport": [53, 53],
        "length": [0, 65535],
        "ttl": [0, 255],
        "tcp_flags": [0, 0],
        "payload": "",
        "mask": "",
        "base": "payload",
        "offset": 0,
    }
    return {
        "iface": FZ_IF,
        "ifindex": 7,
        "netns": "net-1",
        "prog_id": 1,
        "mode": "skb",
        "requested_mode": "auto",
        "program_sha256": "0" * 64,
        "protected": [FZ_ADDR],
        "monitor": False,
        "attached_at": 1.5,
        "levels": {FZ_ADDR: "normal"},
        "attack": {
            "default": {"pps": 0, "bps": 0, "drop_pps": 1000, "drop_bps": 0, "reasons": {"syn": [1, 0]}},
            "addresses": {},
            "hold_s": 10.0,
            "hook": None,
        },
        "mitigations": {
            "active": [
                {"id": "m1", "protected": FZ_ADDR, "proto": "udp", "port": 53, "filter": flt, "fingerprint": "udp/53"}
            ],
            "lifted": [],
            "suppressed": {},
        },
        "connlimits": {FZ_ADDR: {"new_per_source": 20}},
        "forward": [],
        "forward_health": {},
    }


WRONG = ["x", 1, 1.5, 10**30, True, None, [], {}, [1, "x"], {"a": [1]}]


def hostile_states() -> list[bytes]:
    good = _state_record()
    text = json.dumps(good)
    out = [
        b"",
        b"\0",
        b"\xff\xfe",
        b"{",
        b'"x"',
        b"1",
        b"null",
        b"true",
        b"[]",
        b"[1, 2]",
        b"NaN",
        b"1e999",
        b"[" * 100000,
        b'{"a": ' * 50000,
        b"{}",
    ]
    out += [text[:n].encode() for n in range(0, len(text), max(1, len(text) // 12))]  # truncated
    for k in good:  # each field of the wrong type
        out += [json.dumps({**good, k: v}).encode() for v in WRONG]
    for k, sub in (
        ("attack", "default"),
        ("attack", "addresses"),
        ("attack", "hold_s"),
        ("attack", "hook"),
        ("mitigations", "active"),
        ("mitigations", "suppressed"),
        ("mitigations", "lifted"),
    ):
        for v in WRONG:
            out.append(json.dumps({**good, k: {**good[k], sub: v}}).encode())
    m = good["mitigations"]["active"][0]
    for key in m:
        for v in WRONG[:8]:
            out.append(json.dumps({**good, "mitigations": {**good["mitigations"], "active": [{**m, key: v}]}}).encode())
    for v in (float("nan"), float("inf"), -1e308):
        out.append(json.dumps({**good, "attached_at": v}).encode())
    return out


STATE_ARGVS = [
    ["status"],
    ["status", "--json"],
    ["events", "threshold", "show"],
    ["events", "threshold", "show", "--json"],
    ["events", "threshold", "set", "--drop-pps", "5k"],
    ["export"],
    ["export", "--json"],
    ["block", "add", "198.51.100.0/24"],
    ["allow", "add", "203.0.113.0/24", "--iface", FZ_IF],
    ["port", "open", "tcp", "22"],
    ["diff", "-f", "CFG"],
    ["apply", "-f", "CFG", "--dry-run"],
    ["apply", "-f", "CFG"],
]


class Tally:
    def __init__(self, name: str):
        self.name, self.inputs, self.tracebacks, self.violations = name, 0, [], []

    def report(self, capsys) -> None:
        with capsys.disabled():
            print(
                f"\n{self.name}: {self.inputs} inputs tried, {len(self.tracebacks)} tracebacks, "
                f"{len(self.violations)} promise violations"
            )
        assert not self.tracebacks, self.tracebacks[:5]
        assert not self.violations, self.violations[:5]


def _snapshot(paths) -> dict:
    out = {}
    for p in paths:
        try:
            out[str(p)] = p.read_bytes()
        except FileNotFoundError:
            out[str(p)] = None
    return out


def _run_checked(tally: Tally, argv: list[str], watched) -> int | None:
    tally.inputs += 1
    before = _snapshot(watched)
    runner = CliRunner()
    with runner.isolation() as (_out, err, *_):
        try:
            code = run(argv)
        except BaseException as exc:  # noqa: BLE001 — a traceback is what is counted
            tally.tracebacks.append((argv[:4], f"{type(exc).__name__}: {exc}"[:200]))
            return None
        stderr = err.getvalue().decode("utf-8", "replace")
    lines = stderr.splitlines()
    if code not in (0, 2):
        tally.violations.append((argv[:4], f"exit {code}", stderr[:200]))
    elif code == 2:
        if not lines or not all(ln.startswith("xdpguard: error: ") for ln in lines):
            tally.violations.append((argv[:4], "not one error line", stderr[:200]))
        elif any(_CONTROL.search(ln) for ln in lines):
            tally.violations.append((argv[:4], "control character in the error", stderr[:200]))
        if _snapshot(watched) != before:
            tally.violations.append((argv[:4], "exit 2 but the store or the state file changed"))
    return code


def test_state_file_fuzz(kernel_edge, tmp_path, capsys):
    """Every command that runs here without a kernel, against hostile interface state files."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[interface]]\nname = "{FZ_IF}"\nprotect = ["{FZ_ADDR}"]\n')
    iface = state.resolve_iface(FZ_IF)
    tally = Tally("state-file fuzz")
    # a valid record first: every command works (else the fuzz proves nothing)
    state.write_state(iface, _state_record())
    for argv in STATE_ARGVS:
        argv = [str(cfg) if a == "CFG" else a for a in argv]
        assert _run_checked(tally, argv, []) == 0, argv
    store.save(Desired((InterfaceSpec(FZ_IF, addresses=(AddressSpec(ipaddress.ip_address(FZ_ADDR)),)),)))
    stored = _snapshot([store.desired_path(), store.meta_path()])
    for data in hostile_states():
        iface.state_file.write_bytes(data)
        for argv in STATE_ARGVS:
            argv = [str(cfg) if a == "CFG" else a for a in argv]
            if _run_checked(tally, argv, [iface.state_file, store.desired_path(), store.meta_path()]) == 0:
                # (an input the record's shape allows: a verb may have changed them) back to the start
                iface.state_file.write_bytes(data)
                if _snapshot([store.desired_path(), store.meta_path()]) != stored:
                    for path, content in stored.items():
                        Path(path).write_bytes(content)
    tally.report(capsys)


# hostile TOML for `apply -f`

_SCHEMA_KEYS = {
    "": ["daemon", "interface", "cluster", "bgp"],
    "daemon": sorted(_DAEMON_KEYS),
    "cluster": sorted(_CLUSTER_KEYS),
    "bgp": sorted(_BGP_KEYS),
    "interface": sorted(_IFACE_KEYS),
    "address": sorted(_ADDR_KEYS),
    "filter": sorted(_FILTER_KEYS),
    "forward": sorted(_FORWARD_KEYS),
    "events": sorted(_EVENT_KEYS),
    "limits": sorted(_LIMIT_KEYS),
    "syn": sorted(_SYN_KEYS),
    "connlimit": sorted(CONNLIMIT_KEYS),
    "port_limit": ["ports", "src_pps"],
}
_TABLES = {"daemon", "cluster", "bgp", "events", "limits", "syn", "connlimit", "reasons"}
_ARRAYS_OF_TABLES = {"interface", "address", "filter", "forward", "port_limit", "neighbors"}


def _hostile_scalar(r: random.Random):
    pick = r.randrange(12)
    if pick == 0:
        return r.choice(
            [
                "198.18.0.2",
                "2001:db8::2",
                "198.18.0.3",
                "2001:db8::3",
                'fe80::1%x";}',
                "0.0.0.0/0",
                "::/0",
                "198.51.100.10:80",
                "[2001:db8::10]:80",
                "127.0.0.1:99999",
            ]
        )
    if pick == 1:  # control characters, escaped in the TOML
        return r.choice(["/bin/true", "a", "tcp:22", "syn", "drop"]) + chr(
            r.choice([0, 7, 9, 10, 13, 27, 127, 0x85, 0x9B])
        )
    if pick == 2:
        return r.choice(['"', "\\", "'", '"""', 'a"b', 'x\\"y', "%s", "{}"])
    if pick == 3:
        return r.choice([10**30, -(10**30), 2**64, -1, 0, 1e308, -0.0, float("inf"), float("nan")])
    if pick == 4:
        return r.choice([True, False])
    if pick == 5:
        return [r.choice(["198.18.0.2", "2001:db8::2", "198.18.0.9", "2001:db8::9"]) for _ in range(r.randrange(4))]
    if pick == 6:
        return r.choice(["syn,!syn", "syn,!ack", "udp:53", "tcp:0-70000", "1-2", "10k", "1e999", "/bin/true", "all"])
    if pick == 7:
        return []
    if pick == 8:
        return {}
    if pick == 9:
        return "x" * r.choice([0, 1, 16, 64, 5000])
    if pick == 10:
        return r.randrange(-5, 70000)
    return r.random() * 10 ** r.randrange(0, 12)


def _hostile_tree(r: random.Random, kind: str, depth: int):
    keys = _SCHEMA_KEYS.get(kind, ["a", "b"])
    out: dict = {}
    for _ in range(r.randrange(1, 6)):
        k = r.choice(keys) if r.random() < 0.9 else r.choice(["unknown", "a\nb", "\x1b", '"'])
        if depth < 4 and (k in _TABLES or k in _ARRAYS_OF_TABLES) and r.random() < 0.7:
            sub = _hostile_tree(r, k, depth + 1)
            out[k] = [sub, _hostile_tree(r, k, depth + 1)][: r.randrange(1, 3)] if k in _ARRAYS_OF_TABLES else sub
        else:
            out[k] = _hostile_scalar(r)
    if kind == "interface" and r.random() < 0.8:
        out.setdefault("name", FZ_IF)
        out.setdefault("protect", [FZ_ADDR, "2001:db8::2"][: r.randrange(1, 3)])
    return out


def _toml_text(r: random.Random, tree: dict) -> str:
    try:
        text = tomli_w.dumps(tree)
    except (TypeError, ValueError):  # e.g. a key tomli-w cannot write: write a deep one instead
        text = ""
    mut = r.randrange(10)
    if mut == 0:
        n = r.choice([30, 500, 5000])
        text += "deep = " + "[" * n + "]" * n + "\n"
    elif mut == 1:
        n = r.choice([30, 3000])
        text += "deep = " + "{ a = " * n + "1" + " }" * n + "\n"
    elif mut == 2:
        text += "huge = " + "9" * r.choice([20, 5000]) + "\n"
    elif mut == 3:
        text = text[: r.randrange(len(text) + 1)]  # truncated
    elif mut == 4:
        text = "# only a comment\n" if r.random() < 0.5 else ""
    return text


def test_apply_hostile_toml_fuzz(kernel_edge, tmp_path, capsys):
    """`apply -f` with generated hostile TOML (deep nesting, control characters, huge numbers,
    mixed families, quotes), against a box that protects xgt0."""
    r = random.Random(24)
    iface = state.resolve_iface(FZ_IF)
    f = tmp_path / "hostile.toml"
    tally = Tally("apply -f hostile TOML fuzz")
    accepted = 0
    state.write_state(iface, _state_record())
    for i in range(1200):
        text = _toml_text(r, _hostile_tree(r, "", 0))
        f.write_text(text, encoding="utf-8", errors="surrogatepass")
        argv = ["apply", "-f", str(f)] + (["--force"] if i % 3 == 0 else [])
        code = _run_checked(tally, argv, [store.desired_path(), store.meta_path()])
        if code == 0:
            accepted += 1
            try:
                want = load(f)[0]
                if store.load() != Desired(want.interfaces, want.daemon, want.cluster, want.bgp) and want.interfaces:
                    tally.violations.append((text[:80], "the store holds something else than the file"))
            except UserError as exc:
                tally.violations.append((text[:80], f"the store does not load back: {exc.message}"))
            store.save(Desired())  # the next input starts from nothing stored
    with capsys.disabled():
        print(f"  ({accepted} of them applied)")
    tally.report(capsys)
    assert accepted > 0  # some inputs got through (else the fuzz only tested the front door)
