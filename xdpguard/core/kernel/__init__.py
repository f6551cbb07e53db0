"""The kernel side below the map owner (guard.py): BPF syscalls, the program, its maps.

- abi: the Python mirror of bpf/include/abi.h: reasons, kinds, map names and layouts.
- dataplane: compile (bcc), load, attach, replace and query the XDP program and the tc recorder.
- libbpf: ctypes bindings to the few libbpf calls (map batch ops, prog test run, pins, tc).
- maps: typed access to one map by file descriptor (BpfMap).
- migrate: carry the maps of an attached program over to a program whose map shapes differ.
"""
