#!/usr/bin/env bash
# Put xdpguard on a root shell's PATH, with shell completion and man pages (all optional extras:
# scripts/setup.sh alone builds .venv, and .venv/bin/xdpguard works without any of this).
#
#   scripts/install.sh [--prefix DIR] [--no-setup]    install (default prefix /usr/local)
#   scripts/install.sh --uninstall [--prefix DIR]     remove exactly what install put there
#
# Installs, under the prefix:
#   bin/xdpguard                                   a symlink to this checkout's .venv/bin/xdpguard
#   share/bash-completion/completions/xdpguard     bash (loaded by the bash-completion package;
#                                                  without it: source the file from ~/.bashrc)
#   share/zsh/site-functions/_xdpguard             zsh (on Debian's default $fpath)
#   share/fish/vendor_completions.d/xdpguard.fish  fish
#   share/man/man1/xdpguard.1, xdpguard-*.1        man pages (`man xdpguard`, `man xdpguard-block`)
# The completion scripts and pages are generated from the CLI (scripts/gen-completions.sh,
# scripts/gen-man.sh), so they always match this checkout. $DESTDIR is prepended to every path
# (for packaging and tests).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/usr/local
SETUP=1
UNINSTALL=0
DESTDIR="${DESTDIR:-}"

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 2; }
step() { printf '==> %s\n' "$*"; }

while (($#)); do
    case "$1" in
        --prefix) [[ $# -ge 2 && -n "$2" ]] || die "--prefix needs a directory"; PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#--prefix=}"; [[ -n "$PREFIX" ]] || die "--prefix needs a directory"; shift ;;
        --no-setup) SETUP=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$PREFIX" == /* ]] || die "--prefix must be an absolute path, not '$PREFIX'"

ROOT="$DESTDIR$PREFIX"
BIN="$ROOT/bin/xdpguard"
BASH_FILE="$ROOT/share/bash-completion/completions/xdpguard"
ZSH_FILE="$ROOT/share/zsh/site-functions/_xdpguard"
FISH_FILE="$ROOT/share/fish/vendor_completions.d/xdpguard.fish"
MAN_DIR="$ROOT/share/man/man1"
MANIFEST="$ROOT/share/xdpguard/installed-files"

if ((UNINSTALL)); then
    [[ -f "$MANIFEST" ]] || die "nothing installed under $ROOT (no $MANIFEST)"
    while IFS= read -r f; do
        rm -f -- "$f"
    done <"$MANIFEST"
    rm -f -- "$MANIFEST"
    rmdir -- "$(dirname "$MANIFEST")" 2>/dev/null || true
    step "removed xdpguard's files from $ROOT"
    exit 0
fi

if ((SETUP)); then
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (scripts/setup.sh installs packages); or pass --no-setup"
    bash "$REPO_ROOT/scripts/setup.sh"
fi
XDPGUARD="$REPO_ROOT/.venv/bin/xdpguard"
[[ -x "$XDPGUARD" ]] || die "$XDPGUARD not found; run scripts/setup.sh first"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
XDPGUARD="$XDPGUARD" bash "$REPO_ROOT/scripts/gen-completions.sh" "$work/completions" >/dev/null
PYTHON="$REPO_ROOT/.venv/bin/python" bash "$REPO_ROOT/scripts/gen-man.sh" "$work/man" >/dev/null

installed=()
put() {  # put SRC DEST: install a file 0644, remember it
    install -D -m 0644 "$1" "$2"
    installed+=("$2")
}
mkdir -p "$(dirname "$BIN")"
if [[ -e "$BIN" && ! -L "$BIN" ]]; then
    die "$BIN exists and is not a symlink; move it away first"
fi
ln -sfn "$XDPGUARD" "$BIN"
installed+=("$BIN")
put "$work/completions/xdpguard.bash" "$BASH_FILE"
put "$work/completions/_xdpguard" "$ZSH_FILE"
put "$work/completions/xdpguard.fish" "$FISH_FILE"
for page in "$work"/man/*.1; do
    put "$page" "$MAN_DIR/$(basename "$page")"
done
mkdir -p "$(dirname "$MANIFEST")"
printf '%s\n' "${installed[@]}" >"$MANIFEST"
step "installed $BIN -> $XDPGUARD"
step "completion: bash ($BASH_FILE), zsh ($ZSH_FILE), fish ($FISH_FILE)"
step "man pages: $MAN_DIR/xdpguard.1 and $(( ${#installed[@]} - 5 )) command pages (man xdpguard)"
