#!/usr/bin/env python3
"""Compile xdpguard's programs, load them (no attach) and print what the verifier says of them:

  .venv/bin/python scripts/verifier_insns.py     # XDP and tc egress: xlated bytes, verified_insns

verified_insns (bpf_prog_info, kernel 5.16+) is the verifier's processed-instruction count,
limited to 1,000,000: the margin a change of the steps or parsing.h leaves."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchcases import prog_info  # noqa: E402
from xdpguard.core.testrun import TestBed  # noqa: E402

bed = TestBed()
for name, fd in (("xdp", bed.prog.prog_fd), ("egress", bed.prog.egress_fd)):
    info = prog_info(fd)
    print(name, "xlated bytes", info.xlated_prog_len, "verified_insns", info.verified_insns)
bed.close()
