"""The demo: a namespace lab where xdpguard protects a service from an attacker.

    python -m xdpguard.lab.demo

Builds client, attacker and protector namespaces (198.18.0.0/15, 2001:db8::/32, no route off
the machine), runs a bounded echo service on the protected address, attaches xdpguard with the
real CLI, sends a bounded UDP flood from the attacker, blocks the attacker, shows the counters,
and tears everything down. Every step prints the command it runs.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

from .echo import probe  # noqa: F401  (documented entry point of the same package)
from .netns import Lab

PY = sys.executable
PROT4, PROT6 = "198.18.0.2", "2001:db8:0:1::2"
CLIENT4, ATTACK4 = "198.18.0.1", "198.18.0.9"


def _xg_quiet(ns: str, *args: str) -> None:
    """Cleanup: run a command whose failure (already done) does not matter."""
    subprocess.run(["ip", "netns", "exec", ns, _xdpguard(), *args], capture_output=True, timeout=60,
                   stdin=subprocess.DEVNULL)


def _xg(ns: str, *args: str, show: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", "netns", "exec", ns, _xdpguard(), *args]
    if show:
        print(f"\n$ xdpguard {' '.join(args)}", flush=True)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if show:
        sys.stdout.write(p.stdout)
        sys.stdout.write(p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"demo: 'xdpguard {' '.join(args)}' failed with exit {p.returncode}")
    return p


def _xdpguard() -> str:
    return shutil.which("xdpguard") or "xdpguard"


def _success_rate(lab: Lab, ns: str, n: int = 20) -> tuple[float, float]:
    """Legitimate client: n TCP echo requests; (success %, median latency ms)."""
    code = (
        "import time,statistics\n"
        "from xdpguard.lab.echo import probe\n"
        f"ok=0; lat=[]\n"
        f"for i in range({n}):\n"
        f"    t=time.perf_counter(); r,_=probe('tcp','{PROT4}',7,'{CLIENT4}',0.5); d=(time.perf_counter()-t)*1000\n"
        "    ok+=r; lat.append(d) if r else None\n"
        f"print(ok*100/{n}, statistics.median(lat) if lat else 0)\n"
    )
    out = lab.run(ns, PY, "-c", code, timeout=60).stdout.split()
    return float(out[0]), float(out[1])


FLOOD = (
    "import socket,sys,time\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((sys.argv[1],0))\n"
    "end=time.monotonic()+float(sys.argv[3]); n=0; payload=b'x'*512\n"
    "while n<int(sys.argv[4]) and time.monotonic()<end:\n"
    "    s.sendto(payload,(sys.argv[2],7)); n+=1\n"
    "print(n)\n"
)


def main() -> int:
    print("xdpguard demo: a protective IP in a namespace lab (nothing touches this machine's own interfaces)")
    with Lab() as lab:
        client = lab.netns("demo-cli")
        attacker = lab.netns("demo-atk")
        prot = lab.netns("demo-prot")
        lab.run(prot, "ip", "link", "add", "br0", "type", "bridge")
        lab.run(prot, "ip", "link", "set", "br0", "up")
        # client and attacker reach the protector over their own veth pairs (one NIC each side)
        lab.veth(client, "eth0", prot, "xgin0")
        lab.veth(attacker, "eth0", prot, "xgin1")
        for ifn in ("xgin0", "xgin1"):
            lab.run(prot, "ip", "link", "set", ifn, "master", "br0")
        lab.addr(client, "eth0", "198.18.0.1/24")
        lab.addr(attacker, "eth0", "198.18.0.9/24")
        lab.addr(prot, "br0", "198.18.0.2/24")
        lab.addr(client, "eth0", "2001:db8:0:1::1/64")
        lab.addr(prot, "br0", "2001:db8:0:1::2/64")
        srv = lab.popen(prot, PY, "-m", "xdpguard.lab.echo", "serve", "--port", "7", "--duration", "300",
                        stdout=subprocess.PIPE, text=True)
        srv.stdout.readline()
        print(f"lab: client {CLIENT4}, attacker {ATTACK4}, protected service {PROT4} / {PROT6} port 7 (tcp+udp)")

        # XDP sits on the protector's uplink port facing the attacker and one facing the client;
        # here we protect the port the attacker uses and the one the client uses.
        for ifn in ("xgin0", "xgin1"):
            _xg(prot, "attach", ifn, "--protect", f"{PROT4},{PROT6}")
            lab.defer(f"detach {ifn}", _xg_quiet, prot, "detach", ifn)

        rate, lat = _success_rate(lab, client)
        print(f"\nlegitimate client before the attack: {rate:.0f}% of requests answered, median {lat:.2f} ms")

        print(f"\nattacker {ATTACK4} floods UDP (bounded: 200000 packets or 3 s)...")
        flood = lab.popen(attacker, PY, "-c", FLOOD, ATTACK4, PROT4, "3", "200000", stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        _xg(prot, "block", "add", ATTACK4, "--iface", "xgin1")
        rate, lat = _success_rate(lab, client)
        sent = flood.stdout.readline().strip()
        flood.wait(timeout=10)
        print(f"attacker sent {sent} packets")
        print(f"legitimate client during the attack, attacker blocked: {rate:.0f}% answered, median {lat:.2f} ms")
        _xg(prot, "status", "xgin1")
        _xg(prot, "block", "list", "--iface", "xgin1")
        st = json.loads(_xg(prot, "status", "xgin1", "--json", show=False).stdout)[0]
        dropped = sum(c["packets"] for c in st["counters"] if c["kind"] == "drop")
        print(f"\nsummary: XDP dropped {dropped} attack packets at the NIC; the client kept {rate:.0f}% success")
        _xg(prot, "detach", "xgin0")
        _xg(prot, "detach", "xgin1")
    print("\nlab removed; nothing left behind")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(5)
    sys.exit(main())
