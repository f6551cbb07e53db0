"""Shell completion, man pages and scripts/install.sh: generated from the click CLI by
scripts/gen-completions.sh and scripts/gen-man.sh; the bash completion loads and completes, the
man pages render and document every command and option; install/uninstall leave nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from xdpguard.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
XDPGUARD = VENV_BIN / "xdpguard"
ENV = {
    **os.environ,
    "XDPGUARD": str(XDPGUARD),
    "PYTHON": sys.executable,
    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
}

pytestmark = pytest.mark.skipif(not XDPGUARD.exists(), reason="needs the installed xdpguard script (scripts/setup.sh)")


def sh(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=env or ENV, **kw)


@pytest.fixture(scope="module")
def completions(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("completions")
    p = sh("bash", str(REPO / "scripts" / "gen-completions.sh"), str(out))
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def man_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("man")
    p = sh("bash", str(REPO / "scripts" / "gen-man.sh"), str(out))
    assert p.returncode == 0, p.stderr
    return out


def complete(completions: Path, words: list[str]) -> list[str]:
    """What bash offers for the last of `words`, through the generated completion function."""
    script = (
        f"source {completions / 'xdpguard.bash'}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
        f"COMP_CWORD={len(words) - 1}; COMPREPLY=(); _xdpguard_completion xdpguard; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    p = sh("bash", "-c", script)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


def test_bash_completion_loads(completions):
    p = sh("bash", "-c", f"source {completions / 'xdpguard.bash'}; complete -p xdpguard")
    assert p.returncode == 0 and "-F _xdpguard_completion" in p.stdout and p.stdout.strip().endswith("xdpguard"), p


def test_bash_completion_completes_commands_subcommands_and_choices(completions):
    assert "block" in complete(completions, ["xdpguard", "bl"])
    assert set(complete(completions, ["xdpguard", ""])) >= set(cli.commands)
    assert set(complete(completions, ["xdpguard", "block", ""])) >= {"add", "del", "list", "load"}
    assert "--mode" in complete(completions, ["xdpguard", "attach", "eth1", "--mo"])
    assert complete(completions, ["xdpguard", "attach", "eth1", "--mode", ""]) == ["auto", "native", "skb"]


def test_zsh_and_fish_files(completions):
    zsh, fish = (completions / "_xdpguard").read_text(), (completions / "xdpguard.fish").read_text()
    assert zsh.startswith("#compdef xdpguard") and "_XDPGUARD_COMPLETE=zsh_complete" in zsh
    assert "_XDPGUARD_COMPLETE=fish_complete" in fish and "complete" in fish
    if shutil.which("zsh"):
        assert sh("zsh", "-n", str(completions / "_xdpguard")).returncode == 0
    if shutil.which("fish"):
        assert sh("fish", "--no-execute", str(completions / "xdpguard.fish")).returncode == 0


def _visible(group: click.Group) -> dict[str, click.Command]:
    return {n: c for n, c in group.commands.items() if not c.hidden}


def render(page: Path) -> str:
    """The page as man shows it (groff's man macros), with no groff warnings."""
    p = sh("groff", "-man", "-Tutf8", "-ww", "-rLL=200n", str(page), env={**ENV, "LC_ALL": "C.UTF-8"})
    assert p.returncode == 0 and not p.stderr.strip(), f"{page.name}: {p.stderr}"
    return (
        subprocess.run(["col", "-bx"], input=p.stdout, capture_output=True, text=True).stdout
        if shutil.which("col")
        else p.stdout
    )


def test_a_page_per_command_and_the_overview(man_dir):
    want = {"xdpguard.1"} | {f"xdpguard-{n}.1" for n in _visible(cli)}
    assert {p.name for p in man_dir.glob("*.1")} == want
    overview = render(man_dir / "xdpguard.1")
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT", "EXIT STATUS"):
        assert f"\n{section}\n" in overview, section
    assert "--version" in overview and "XDPGUARD_STATE_DIR" in overview
    for name in _visible(cli):
        assert f"xdpguard-{name}(1)" in overview


@pytest.mark.parametrize("name", sorted(_visible(cli)))
def test_page_documents_every_subcommand_and_option(man_dir, name):
    text = render(man_dir / f"xdpguard-{name}.1")
    cmd = cli.commands[name]
    assert text.lstrip().startswith(f"XDPGUARD-{name.upper()}(1)") and f"xdpguard {name}" in text
    cmds = [cmd] + (list(_visible(cmd).values()) if isinstance(cmd, click.Group) else [])
    if isinstance(cmd, click.Group):
        for sub in _visible(cmd):
            assert f"xdpguard {name} {sub}" in text, sub
    for c in cmds:
        for p in c.params:
            if isinstance(p, click.Option) and not p.hidden:
                for opt in p.opts:
                    assert opt in text, f"{c.name}: {opt}"


def test_man_l_shows_a_page(man_dir):
    if not shutil.which("man"):
        pytest.skip("man-db is not installed")
    p = sh("man", "-l", str(man_dir / "xdpguard-block.1"), env={**ENV, "MANPAGER": "cat", "MANWIDTH": "100"})
    assert p.returncode == 0 and "xdpguard block add" in p.stdout, p.stderr


def test_install_and_uninstall_under_destdir(tmp_path):
    env = {**ENV, "DESTDIR": str(tmp_path)}
    p = sh("bash", str(REPO / "scripts" / "install.sh"), "--no-setup", "--prefix", "/usr/local", env=env)
    assert p.returncode == 0, p.stderr
    root = tmp_path / "usr" / "local"
    assert os.readlink(root / "bin" / "xdpguard") == str(REPO / ".venv" / "bin" / "xdpguard")
    for f in (
        "share/bash-completion/completions/xdpguard",
        "share/zsh/site-functions/_xdpguard",
        "share/fish/vendor_completions.d/xdpguard.fish",
        "share/man/man1/xdpguard.1",
        "share/man/man1/xdpguard-block.1",
    ):
        assert (root / f).is_file(), f
    loaded = sh("bash", "-c", f"source {root / 'share/bash-completion/completions/xdpguard'}; complete -p xdpguard")
    assert loaded.returncode == 0 and "_xdpguard_completion" in loaded.stdout
    p = sh("bash", str(REPO / "scripts" / "install.sh"), "--uninstall", env=env)
    assert p.returncode == 0, p.stderr
    left = [str(x.relative_to(tmp_path)) for x in tmp_path.rglob("*") if x.is_file() or x.is_symlink()]
    assert left == []


@pytest.mark.parametrize("args", [["--prefix"], ["--prefix", "relative"], ["--bogus"], ["--uninstall"]])
def test_install_bad_arguments_are_one_line_exit_2(tmp_path, args):
    p = sh("bash", str(REPO / "scripts" / "install.sh"), "--no-setup", *args, env={**ENV, "DESTDIR": str(tmp_path)})
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and p.stderr.startswith("install.sh: error: "), p
    assert not any(tmp_path.rglob("*"))
