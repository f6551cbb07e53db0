"""Seeding the TCP state table at attach: parsing /proc/net/tcp{,6} and /proc/net/nf_conntrack."""

from __future__ import annotations

import ipaddress

from xdpguard.core import tcpstate

IP = ipaddress.ip_address
PROT = {IP("198.18.0.1"), IP("2001:db8:0:1::1")}

PROC_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 010012C6:0050 0A0012C6:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0
   1: 010012C6:0050 0B0012C6:9C41 06 00000000:00000000 00:00000000 00000000     0        0 2 1 0
   2: 020012C6:0050 0A0012C6:9C42 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0
   3: 010012C6:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0
"""
PROC_TCP6 = """  sl  local_address                         remote_address                        st
   0: B80D0120010000000000000001000000:0050 B80D0120010000000000000010000000:9C40 01 0
   1: 0000000000000000FFFF0000010012C6:0016 0000000000000000FFFF00000A0012C6:D431 01 0
"""
CONNTRACK = """ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.10 dst=198.18.0.1 sport=40000 dport=80 src=198.18.1.2 dst=198.18.1.1 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 59 ESTABLISHED src=198.51.100.9 dst=198.18.0.1 sport=1234 dport=80 src=198.18.1.2 dst=198.18.1.1 sport=80 dport=1234 mark=0 zone=0 use=2
ipv4     2 tcp      6 59 SYN_RECV src=203.0.113.9 dst=198.18.0.1 sport=1235 dport=80 src=198.18.1.2 dst=198.18.1.1 sport=80 dport=1235 mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=198.18.0.10 dst=198.18.0.1 sport=5000 dport=7 src=198.18.1.2 dst=198.18.1.1 sport=7 dport=5000 [ASSURED] mark=0 use=2
ipv6     10 tcp      6 431999 ESTABLISHED src=2001:db8:0:1::10 dst=2001:db8:0:1::1 sport=40001 dport=80 src=2001:db8:0:2::2 dst=2001:db8:0:2::1 sport=80 dport=40001 [ASSURED] mark=0 zone=0 use=2
"""


def test_proc_tcp_established_on_protected_addresses():
    got = tcpstate.parse_proc_tcp(PROC_TCP, PROT)
    assert got == [(IP("198.18.0.10"), 40000, IP("198.18.0.1"), 80)]  # not TIME_WAIT, not 198.18.0.2, not LISTEN


def test_proc_tcp6_and_v4_mapped():
    got = tcpstate.parse_proc_tcp(PROC_TCP6, PROT)
    assert got == [
        (IP("2001:db8:0:1::10"), 40000, IP("2001:db8:0:1::1"), 80),
        (IP("198.18.0.10"), 0xD431, IP("198.18.0.1"), 22),
    ]


def test_conntrack_only_assured_established_tcp_in_the_original_direction():
    got = tcpstate.parse_nf_conntrack(CONNTRACK, PROT)
    assert got == [
        (IP("198.18.0.10"), 40000, IP("198.18.0.1"), 80),
        (IP("2001:db8:0:1::10"), 40001, IP("2001:db8:0:1::1"), 80),
    ]


def test_existing_connections_reads_what_is_there(tmp_path):
    (tmp_path / "tcp").write_text(PROC_TCP)
    (tmp_path / "nf_conntrack").write_text(CONNTRACK)  # no tcp6: skipped
    got = tcpstate.existing_connections(PROT, tmp_path)
    assert got[0] == (IP("198.18.0.10"), 40000, IP("198.18.0.1"), 80) and len(got) == 2  # deduplicated


def test_flow_key_layout():
    k = tcpstate.flow_key((IP("198.18.0.10"), 40000, IP("198.18.0.1"), 80))
    assert bytes(k.client)[:4] == IP("198.18.0.10").packed and bytes(k.prot)[:4] == IP("198.18.0.1").packed
    assert (k.client_port, k.prot_port, k.family) == (40000, 80, 4) and bytes(k.client)[4:] == bytes(12)
