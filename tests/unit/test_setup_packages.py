"""scripts/setup.sh's APT_PACKAGES is read by more than bash: the VM box build (build-box.sh's
setup_packages) and its cache key (vm.sh's box_key) take the array's lines as text. Every word
they get must be a Debian package name (an inline comment once became packages '(offline)', 'its',
'reader', and the box build failed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _box_packages() -> list[str]:
    """The list exactly as build-box.sh's setup_packages produces it."""
    src = (REPO / "scripts" / "vm" / "build-box.sh").read_text()
    body = re.search(r"^setup_packages\(\) \{\n(.*?)\n\}", src, re.S | re.M)
    assert body, "build-box.sh has no setup_packages()"
    out = subprocess.run(
        ["bash", "-c", f"REPO_ROOT={REPO}; {body.group(1)}"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_every_word_the_box_build_reads_is_a_package_name():
    words = _box_packages()
    assert "python3-bpfcc" in words and "haproxy" in words
    bad = [w for w in words if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", w)]
    assert bad == [], bad


def test_the_box_reads_what_bash_installs():
    bash_list = subprocess.run(
        [
            "bash",
            "-c",
            f"source <(sed -n '/^APT_PACKAGES=(/,/^)/p' {REPO}/scripts/setup.sh); "
            "printf '%s\\n' \"${APT_PACKAGES[@]}\"",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert _box_packages() == bash_list.stdout.split()


def test_host_test_packages_are_not_installed_in_the_vm_box():
    """The box is provisioned with XDPGUARD_WHEELS and no network: a host-only test package
    (chromium) there fails the VM tier ('Unable to locate package chromium': CI stop 31's merge)."""
    src = (REPO / "scripts" / "setup.sh").read_text()
    m = re.search(r"^if \[\[ (.*?) \]\]; then\n(?:(?!^fi).*\n)*?.*HOST_TEST_PACKAGES\[@\]", src, re.M)
    assert m, "no if-block around the install of HOST_TEST_PACKAGES"
    assert '-z "$WHEELS_DIR"' in m.group(1) and '"$OFFLINE" != 1' in m.group(1), m.group(1)
    assert "chromium" not in _box_packages()
