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
- the fakes saw only validated values: finite floats, UTF-8 text without NUL;
- state unchanged: the files of the test's world (lists, configs, symlink targets, output
  paths) are as before, and on exit 2 nothing was recorded into the desired-state store.

Two passes: an exhaustive one (each option of each verb × each hostile value, the others
valid) and a hypothesis one (1000 random combinations; derandomized, no database), both
in-process: about 30 s together on an idle machine.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from dataclasses import fields, is_dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdpguard.cli import main as cli_main
from xdpguard.cli.main import cli, run
from xdpguard.core import (capture, cleansing, config, daemon, dataplane, doctor, events, forward, health,
                           metrics, protection, reconcile, state, stats)
from xdpguard.core.errors import UserError
from xdpguard.lab import attack as lab_attack
from xdpguard.lab import probe as lab_probe
from xdpguard.lab import cluster as lab_cluster
from xdpguard.lab import topology

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
    assert {"attach", "block add", "block load", "ban add", "limit set", "syn set", "events threshold set",
            "capture", "run", "apply", "export", "filter add", "forward add"} <= names
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
        (root / "bad.toml").write_text('[[interface]]\nname = "xgp0"\nprotect = ["nope", "198.18.0.999"]\n'
                                       '[interface.events]\nhook = "\'x"\ndrop_pps = "inf"\n')
        (root / "devzero.toml").write_text('[[interface]]\nname = "xgp0"\nprotect = ["198.18.0.2"]\n'
                                           'block_files = ["/dev/zero"]\n')  # was read forever
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
        "inf", "-inf", "nan", "NaN", "1e999", "-1e999", "1e308G", "-1", "-0", "0", "99999999999999999999999999",
        "1" * 400, "", " ", "\x00", "a\x00b", "\udcff", "198.18.0.1\udcfe", "\udba6x", "\ud800\udc00",
        "\n", "a\nb", "x" * 5000, "'x",
        "-", "--", "%s%n", "{}", "0x10", "1_000", "10k", "1.5M", "-5k", ":0", ":65536", "unresolvable.invalid:1",
        "[::1]", "198.18.0.0/33", "2001:db8::1", "tcp:0-70000", "udp:53", "syn,!ack", "zz", "drop=inf",
        w.p("dir"), w.p("link-to-victim"), w.p("dangling"), w.p("victim"), w.p("missing/x"), "/proc/nonexist/x",
        "/dev/zero", "/dev/null", w.p("nul.txt"), w.p("latin1.txt"), w.p("bad.toml"), w.p("devzero.toml"), str(w.hook),
    ]


# Values that pass validation, by parameter name (the fuzzed parameter gets a hostile value,
# the other required ones these).
def valid(w: World, p: click.Parameter) -> str:
    by_name = {
        "iface": "xgp0", "cidrs": "198.18.0.0/24", "addrs": "198.18.0.9", "protect": "198.18.0.2",
        "ports": "80", "to": "198.51.100.10:80", "ttl": "60", "threshold": "100", "file": w.p("list.txt"),
        "path": w.p("fresh.pcapng"), "index": "1", "kind": "udp-flood", "action": "drop", "proto": "tcp",
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
    protection: ["pick_iface", "open_guard", "list_add", "list_del", "list_load", "list_show", "status", "ports_change",
                 "ports_list", "upgrade", "sweep_expired"],
    cleansing: ["limit_set", "limit_clear", "limit_show", "proto_change", "proto_show", "reflection_change",
                "reflection_list", "filter_add", "filter_del", "filter_list", "syn_set", "syn_show", "monitor_change",
                "monitor_show", "fragments_set", "fragments_show", "ban_list", "ban_add", "ban_del"],
    reconcile: ["attach", "detach", "apply_file", "diff_file", "export", "protection_ifaces"],
    state: ["require_root", "resolve_iface", "write_durably"],
    events: ["set_config", "load_config", "read_log", "log_path", "DetectionLoop", "AttackTracker"],
    capture: ["capture"],
    forward: ["add", "delete", "show"],
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
                config.load(args[0])  # the real loader: its problems are part of the contract
            raise UserError(f"fake core reached: {qual}")
        return fake


def unvalidated(v, where: str = "") -> list[str]:
    """What in a value handed to the core was not validated: non-finite floats, text that is
    not UTF-8 or has a NUL."""
    if isinstance(v, bool) or v is None or isinstance(v, int):
        return []
    if isinstance(v, float):
        return [] if math.isfinite(v) else [f"{where}: {v!r}"]
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return [f"{where}: not UTF-8 {v!r}"]
        return [f"{where}: NUL in {v!r}"] if "\x00" in v else []
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

    from xdpguard.core import vocab

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
    assert {"xdpguard.core.protection.list_add", "xdpguard.core.cleansing.limit_set",
            "xdpguard.core.capture.capture", "xdpguard.core.reconcile.apply_file"} <= reached


# ---- pass 2: random combinations ----

TEXT_ANY = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)


@st.composite
def argvs(draw, w: World):
    path, cmd = draw(st.sampled_from(LEAVES))
    pool = st.one_of(st.sampled_from(hostile(w)), TEXT_ANY,
                     st.integers(-(2**70), 2**70).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr))
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


@settings(max_examples=1000, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
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
    invoke(core, world, ["attach", "xgp0", "--protect", "198.18.0.2"],
           env={"XDPGUARD_ATTACH_FORCE": "1", "XDPGUARD_ATTACH_MODE": "skb"})
    qual, args, kwargs = core.calls[-1]
    assert qual.endswith("reconcile.attach") and kwargs["force"] is False and kwargs["mode"] == "auto"


# ---- what the listed crashes say now ----


@pytest.mark.parametrize("argv, needle", [
    (["limit", "set", "--src-pps", "inf"], "--src-pps"),
    (["ban", "add", "198.18.0.9", "--ttl", "1e999"], "--ttl"),
    (["syn", "set", "--threshold", "inf"], "--threshold"),
    (["block", "add", "\udcff"], "not valid UTF-8"),
    (["block", "add", "198.18.0.9", "--ttl", "nan"], "--ttl"),
    (["run", "--metrics", "unresolvable.invalid:1"], "cannot resolve"),
    (["events", "threshold", "set", "--hook", "'x"], "--hook"),
    (["events", "threshold", "set", "--hook", "no-such-program-xg"], "not an executable program"),
])
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
    assert core.calls[-1][0].endswith("events.set_config")  # the hook was accepted


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
    with pytest.raises(config.ConfigError) as exc:
        config.load(world.p("bad.toml"))
    assert any("events.hook" in p and "No closing quotation" in p for p in exc.value.problems), exc.value.problems
    base = '[[interface]]\nname = "xgp0"\nprotect = ["198.18.0.2"]\n[interface.events]\n'
    d, warnings = config.loads(base + 'hook = "/nonexistent/hook --x"\n', "t.toml")
    assert d.interfaces[0].events.hook == "/nonexistent/hook --x"
    assert any("events.hook" in w and "not an executable program" in w for w in warnings), warnings
    with pytest.raises(config.ConfigError, match="absolute path"):
        config.loads(base + 'hook = "./relative.sh"\n', "t.toml")


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
