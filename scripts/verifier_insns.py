#!/usr/bin/env python3
"""Compile xdpguard's programs, load them (no attach) and print what the verifier says of them:

  .venv/bin/python scripts/verifier_insns.py     # XDP and tc egress: xlated bytes, verified_insns

verified_insns (bpf_prog_info, kernel 5.16+) is the verifier's processed-instruction count,
limited to 1,000,000: the margin a change of policy.h or parsing.h leaves."""
import ctypes
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xdpguard.core.testrun import TestBed
from xdpguard.core import libbpf
u32, u64 = ctypes.c_uint32, ctypes.c_uint64
class Info(ctypes.Structure):
    _fields_ = [("type", u32), ("id", u32), ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", u32), ("xlated_prog_len", u32),
                ("jited_prog_insns", u64), ("xlated_prog_insns", u64), ("load_time", u64), ("created_by_uid", u32),
                ("nr_map_ids", u32), ("map_ids", u64), ("name", ctypes.c_char * 16), ("ifindex", u32), ("gpl", u32),
                ("netns_dev", u64), ("netns_ino", u64), ("nr_jited_ksyms", u32), ("nr_jited_func_lens", u32),
                ("jited_ksyms", u64), ("jited_func_lens", u64), ("btf_id", u32), ("func_info_rec_size", u32),
                ("func_info", u64), ("nr_func_info", u32), ("nr_line_info", u32), ("line_info", u64),
                ("jited_line_info", u64), ("nr_jited_line_info", u32), ("line_info_rec_size", u32),
                ("jited_line_info_rec_size", u32), ("nr_prog_tags", u32), ("prog_tags", u64), ("run_time_ns", u64),
                ("run_cnt", u64), ("recursion_misses", u64), ("verified_insns", u32), ("pad", u32)]
bed = TestBed()
for name, fd in (("xdp", bed.prog.prog_fd), ("egress", bed.prog.egress_fd)):
    info = Info()
    n = u32(ctypes.sizeof(info))
    libbpf.lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n))
    print(name, "xlated bytes", info.xlated_prog_len, "verified_insns", info.verified_insns)
bed.close()
