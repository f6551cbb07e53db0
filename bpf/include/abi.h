/* abi.h — the one contract between the XDP program and the Python controller.
 *
 * Drop reasons, verdict kinds, map names, key/value layouts and flag bits are defined here
 * and nowhere else. xdpguard/core/abi.py mirrors this file; tests/unit/test_abi_sync.py
 * parses it and fails on any drift. Change a layout => give the map a new name (_v2).
 *
 * Kernel map names are limited to 15 characters (BPF_OBJ_NAME_LEN - 1), so maps are named
 * xg_<subject>_<kind> rather than xdpguard_<subject>_<kind>.
 */
#ifndef XDPGUARD_ABI_H
#define XDPGUARD_ABI_H

#define XG_ABI_VERSION 1

/* Reasons. Every verdict carries exactly one. 0..2 are pass reasons, the rest drop reasons. */
#define XG_REASON_BYPASS      0   /* pass: destination not protected, or not IPv4/IPv6 */
#define XG_REASON_CLEAN       1   /* pass: protected destination, every check passed */
#define XG_REASON_ALLOWLIST   2   /* pass: source on the allowlist, later checks skipped */
#define XG_REASON_BLOCKLIST   3   /* drop: source on the blocklist */
#define XG_REASON_BANNED      4   /* drop: source under a dynamic ban */
#define XG_REASON_MALFORMED   5   /* drop: truncated or malformed L3/L4 header */
#define XG_REASON_FRAGMENT    6   /* drop: IP fragment (fragment policy) */
#define XG_REASON_PROTOCOL    7   /* drop: protocol blocked */
#define XG_REASON_PORT        8   /* drop: destination port not open */
#define XG_REASON_REFLECTION  9   /* drop: UDP from a reflector source port */
#define XG_REASON_FEATURE     10  /* drop: packet feature filter */
#define XG_REASON_RATELIMIT   11  /* drop: per-source rate limit */
#define XG_REASON_SYN         12  /* drop: SYN flood defence */
#define XG_REASON_MAX         16  /* size of the reason dimension of xg_stats_pcpu */

/* Verdict kinds: the first dimension of xg_stats_pcpu. */
#define XG_KIND_PASS       0   /* XDP_PASS */
#define XG_KIND_DROP       1   /* XDP_DROP */
#define XG_KIND_WOULD_DROP 2   /* monitor mode: would have dropped, passed instead */
#define XG_KIND_MAX        3

/* Index into xg_stats_pcpu: kind * XG_REASON_MAX + reason. */
#define XG_STATS_SLOTS (XG_KIND_MAX * XG_REASON_MAX)

/* Map sizes (compile-time: they change code shape, not policy). */
#ifndef XG_PROTECTED_MAX
#define XG_PROTECTED_MAX 1024
#endif
#ifndef XG_LIST_MAX
#define XG_LIST_MAX 2097152          /* entries per allow/block trie, per address family */
#endif

#ifndef XG_PORTS_MAX
#define XG_PORTS_MAX 262144          /* open (protected address, proto, port) entries */
#endif

/* xg_config_arr[0].flags */
#define XG_CFG_ENABLED (1ULL << 0)    /* program filters at all (else everything is bypass) */

/* Parsing bounds. */
#ifndef XG_VLAN_MAX
#define XG_VLAN_MAX 2
#endif

/* ---- map layouts ---- */

/* xg_stats_pcpu value: per CPU, one per (kind, reason) slot. */
struct xg_counter {
    __u64 packets;
    __u64 bytes;
};

/* xg_config.lists_mask: which list maps hold entries (the data path skips empty ones). */
#define XG_LM_ALLOW4_HASH (1ULL << 0)
#define XG_LM_ALLOW4_LPM  (1ULL << 1)
#define XG_LM_ALLOW6_HASH (1ULL << 2)
#define XG_LM_ALLOW6_LPM  (1ULL << 3)
#define XG_LM_BLOCK4_HASH (1ULL << 4)
#define XG_LM_BLOCK4_LPM  (1ULL << 5)
#define XG_LM_BLOCK6_HASH (1ULL << 6)
#define XG_LM_BLOCK6_LPM  (1ULL << 7)

/* xg_config_arr[0]: run-time switches. */
struct xg_config {
    __u64 flags;          /* XG_CFG_* */
    __u64 monitor_mask;   /* bit r set: drop reason r is counted as would_drop and passed */
    __u64 lists_mask;     /* XG_LM_*: set by the controller after every list change */
};

/* xg_protected.flags */
#define XG_PROT_PORT_POLICY (1ULL << 0)  /* only TCP/UDP ports in xg_ports_hash are reachable */

/* xg_prot4_hash / xg_prot6_hash value: one per protected address. */
struct xg_protected {
    __u64 flags;          /* XG_PROT_* */
};

/* xg_ports_hash key: an open port of a protected address (v4 uses addr[0..3], rest zero). */
struct xg_port_key {
    __u8 addr[16];        /* protected address, network byte order */
    __u16 port;           /* destination port, host byte order */
    __u8 proto;           /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 family;          /* 4 or 6 */
};

/* xg_ports_hash value. */
struct xg_port_value {
    __u64 flags;          /* reserved, 0 */
};

/* Key of xg_prot6_hash (xg_prot4_hash is keyed by a __u32, network byte order). */
struct xg_addr6 {
    __u8 addr[16];
};

/* LPM keys of xg_allow4_lpm / xg_block4_lpm and the v6 twins. */
struct xg_lpm4_key {
    __u32 prefixlen;      /* 0..32 */
    __u32 addr;           /* network byte order */
};

struct xg_lpm6_key {
    __u32 prefixlen;      /* 0..128 */
    __u8 addr[16];
};

/* Value of every allow/block entry: its own hit counter and an optional expiry. */
struct xg_list_entry {
    __u64 hits;           /* packets that matched this entry (atomic add) */
    __u64 expires_ns;     /* CLOCK_MONOTONIC ns (bpf_ktime_get_ns), 0 = never */
    __u32 prefixlen;      /* the entry's own prefix length: lets the data path delete it */
    __u32 reserved;       /* 0 */
};

/* How many expired entries one lookup may delete before giving up (each retry is a lookup). */
#ifndef XG_EXPIRED_RETRY
#define XG_EXPIRED_RETRY 4
#endif

#endif /* XDPGUARD_ABI_H */
