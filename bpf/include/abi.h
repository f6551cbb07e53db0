/* abi.h — the one contract between the XDP program and the Python controller.
 *
 * Drop reasons, verdict kinds, map names, key/value layouts and flag bits are defined here
 * and nowhere else. xdpguard/core/kernel/abi.py mirrors this file; tests/unit/test_abi_sync.py
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
#define XG_REASON_TCPSTATE    13  /* drop: non-SYN TCP that belongs to no recorded connection */
#define XG_REASON_SYNCOOKIE   14  /* not passed: a SYN answered with a SYN cookie (XDP_TX); a bad cookie
                                   * ACK stays `tcpstate` (xg_cookie_pcpu counts both kinds) */
#define XG_REASON_MITIGATION  15  /* drop: automatic mitigation filter (xdpguard run) */
#define XG_REASON_CONNLIMIT   16  /* a ban's reason: a connection limit in nft (connlimit.py); not a verdict */
#define XG_REASON_UNKNOWN     17  /* drop: an unknown source past its share of the per-destination bucket */
#define XG_REASON_CC          18  /* a ban's reason: an HTTP flood offender seen by HAProxy (l7/bans.py); not a verdict */
#define XG_REASON_GEO         19  /* drop: source in a country the address's geo rule drops (geo.h); 18 is main's cc */
#define XG_REASON_WATERMARK   20  /* drop: UDP to a watermarked service without a valid mark (steps/watermark.h) */
#define XG_REASON_TCPFLAGS    21  /* drop: TCP with SYN and FIN, or SYN and RST (steps/tcpflags.h) */
#define XG_REASON_BUDGET      22  /* drop: unverified UDP past its service's admission budget (steps/budget.h) */
#ifndef XG_REASON_MAX
#define XG_REASON_MAX         32  /* size of the reason dimension of xg_stats_pcpu (16 before
                                     * this wave: -D16 builds that layout for the upgrade test) */
#endif

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

#ifndef XG_SOURCES_MAX
#define XG_SOURCES_MAX 1048576       /* LRU entries for per-source buckets and first-SYN state */
#endif
#ifndef XG_BANS_MAX
#define XG_BANS_MAX 262144           /* dynamic bans (LRU) */
#endif
#ifndef XG_OPBANS_MAX
#define XG_OPBANS_MAX 65536          /* operator bans (`xdpguard ban add`; plain hash: never evicted) */
#endif
#ifndef XG_SYNAUTH_MAX
#define XG_SYNAUTH_MAX 262144        /* retransmission-authenticated sources (LRU: soft, see xg_synauth) */
#endif
#ifndef XG_SYNAUTH_SYNS
#define XG_SYNAUTH_SYNS 8            /* SYNs one retransmission authentication admits, at most */
#endif

#ifndef XG_FLOWS_MAX
#define XG_FLOWS_MAX 262144          /* recorded connections (LRU; only tc egress inserts) */
#endif
#ifndef XG_EMBRYOS_MAX
#define XG_EMBRYOS_MAX 65536         /* half-open connections: SYN or SYN-ACK sent (LRU; tc egress) */
#endif

#ifndef XG_GOODSRC_MAX
#define XG_GOODSRC_MAX 262144        /* verified sources (plain hash: only tc egress inserts; the controller sweeps) */
#endif
#ifndef XG_GOOD_TTL_S
#define XG_GOOD_TTL_S 86400          /* a TCP-verified source is forgotten this long after its last exchange */
#endif
#ifndef XG_GOOD_UDP_TTL_S
#define XG_GOOD_UDP_TTL_S 600        /* a UDP-verified one this long after the last answer it got */
#endif

/* Defaults of xg_vcfg_arr (0 there = these): what one real client sends, at most, while its
 * packets use the verified privilege; UDP peacetime; the longest ban from spoofable evidence. */
#define XG_VERIFIED_TCP_PPS 20000
#define XG_VERIFIED_TCP_BURST 40000
#define XG_VERIFIED_UDP_PPS 2000
#define XG_VERIFIED_UDP_BURST 4000
#define XG_UDP_PEACE_PPS 5000        /* UDP packets/s to one address, on one CPU, above which it is flooded */
#define XG_UDP_PEACE_HOLD_S 30       /* ... and stays so this long after the last second over it */
#define XG_SPOOF_BAN_S 10            /* a data-path ban from spoofable evidence lasts at most this long */

#ifndef XG_PORTS_MAX
#define XG_PORTS_MAX 262144          /* open (protected address, proto, port) entries */
#endif

/* xg_config_arr[0].flags */
#define XG_CFG_ENABLED        (1ULL << 0)  /* program filters at all (else everything is bypass) */
#define XG_CFG_DROP_FRAGMENTS (1ULL << 1)  /* fragment policy: drop IP fragments (else pass) */
#define XG_CFG_REFLECTION     (1ULL << 2)  /* drop UDP from ports marked in xg_reflect_arr */
#define XG_CFG_TCPSTATE       (1ULL << 3)  /* the tc egress recorder is attached: validate TCP state */

#ifndef XG_FILTERS_MAX
#define XG_FILTERS_MAX 64                  /* feature filter slots */
#endif
#define XG_PAYLOAD_MATCH_MAX 16            /* bytes one filter compares */
#define XG_PAYLOAD_OFF_MAX   1024          /* highest offset a filter may compare at */

/* Parsing bounds. */
#ifndef XG_VLAN_MAX
#define XG_VLAN_MAX 2
#endif
#ifndef XG_IPV6_EXT_MAX
#define XG_IPV6_EXT_MAX 6            /* IPv6 extension headers walked; a longer chain is malformed */
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
#define XG_LM_PREFILTER   (1ULL << 8)  /* xg_lpf_arr holds a bit for every list entry: trusted */

/* xg_lpf_arr, the lists' prefilter (steps/lists.h): per (list, family), one bit per IPv4 /16 (the
 * source's top 16 bits) or per hash of an IPv6 /48 (lpf_bit), set for every /16 or /48 an entry
 * of that list covers (an IPv6 prefix shorter than /48 sets them all). A clear bit: no entry of
 * the list covers the source, and its hash and trie are not looked at. The controller sets the
 * bits before it writes the entries and clears none but in a rebuild (a stale bit costs a lookup,
 * a missing one would skip an entry), so the data path trusts the bits only while lists_mask has
 * XG_LM_PREFILTER: a program whose map is new, or a controller that knows nothing of it, leaves it
 * clear and the lists are looked at as before. Word (list * 2 + (family == 6)) * XG_LPF_WORDS +
 * bit / 64, list 0 the allowlist, 1 the blocklist. */
#define XG_LPF_BITS 65536
#define XG_LPF_WORDS 1024            /* XG_LPF_BITS / 64 */
#define XG_LPF_V6_PLEN 48

/* xg_config_arr[0]: run-time switches. */
struct xg_config {
    __u64 flags;          /* XG_CFG_* */
    __u64 monitor_mask;   /* bit r set: drop reason r is counted as would_drop and passed */
    __u64 lists_mask;     /* XG_LM_*: set by the controller after every list change */
    __u32 filters_count;  /* feature filters in use, 0..XG_FILTERS_MAX, evaluated in order */
    __u32 abi_version;    /* XG_ABI_VERSION of the controller that filled the maps (0: 1) */
};

/* xg_protected.flags */
#define XG_PROT_PORT_POLICY (1ULL << 0)  /* only TCP/UDP ports in xg_ports_hash are reachable */
#define XG_PROT_BLOCK_TCP   (1ULL << 1)  /* protocol blocking */
#define XG_PROT_BLOCK_UDP   (1ULL << 2)
#define XG_PROT_BLOCK_ICMP  (1ULL << 3)  /* ICMP and ICMPv6 */
#define XG_PROT_BLOCK_OTHER (1ULL << 4)  /* anything else (incl. IPv6 extension headers) */
#define XG_PROT_PORT_LIMITS (1ULL << 5)  /* xg_portlim_hash holds per-port limit overrides */
#define XG_PROT_TCPSTATE_OFF (1ULL << 6) /* TCP state validation off (it is on while the port policy is) */
#define XG_PROT_GEO         (1ULL << 7)  /* a geo rule applies: xg_geoset_arr[syn.slot] (geo.h) */
#define XG_PROT_WATERMARK   (1ULL << 12) /* some UDP port of the address is watermarked: xg_wm_hash (watermark.h) */
#define XG_PROT_SYN_COOKIE  (1ULL << 16) /* SYN defence answers with SYN cookies (else: retransmission) */
#define XG_PROT_SYN_ALWAYS  (1ULL << 17) /* SYN defence on at any SYN rate (else above syn_threshold_pps) */

/* Per-source limits (token buckets) and the SYN defence, per protected address or port.
 * 0 in a rate means "no limit". */
struct xg_limits {
    __u64 src_pps;        /* packets/s per source */
    __u64 src_burst_pkts; /* bucket depth, packets */
    __u64 src_bps;        /* bytes/s per source (frame bytes as XDP sees them) */
    __u64 src_burst_bytes;
    __u64 dst_pps;        /* packets/s to this protected address:port from all sources */
    __u64 dst_burst_pkts;
    __u64 syn_src_pps;    /* TCP SYNs/s per source */
    __u64 syn_src_burst;
    __u32 ban_s;          /* exceeding src_pps/src_bps/syn_src_pps bans the source for ban_s s */
    __u32 unknown_share_pct; /* 0 = off; else unverified sources may use only this % of the
                              * dst bucket: the rest is kept for verified ones (knowngood.h) */
};

/* SYN flood defence of one protected address. Above syn_threshold_pps SYNs/s to the address,
 * a source must authenticate: its first SYN is dropped and a retransmission arriving between
 * auth_min_ms and auth_max_ms later admits it for auth_keep_s seconds. */
struct xg_syn_policy {
    __u64 syn_threshold_pps;  /* 0 = source authentication off */
    __u32 auth_min_ms;
    __u32 auth_max_ms;
    __u32 auth_keep_s;
    __u32 slot;               /* index into xg_synwin_arr, assigned by the controller */
};

/* xg_prot4_hash / xg_prot6_hash value: one per protected address. */
struct xg_protected {
    __u64 flags;              /* XG_PROT_* */
    struct xg_limits lim;     /* defaults for every port of the address */
    struct xg_syn_policy syn;
};

/* Source key of the rate, ban and SYN-authentication maps (v4 uses addr[0..3], rest zero). */
struct xg_src_key {
    __u8 addr[16];
    __u32 family;             /* 4 or 6 */
};

/* xg_bucket_lru value: a source's token buckets, in nano-units (1 packet = 1e9 tokens) so
 * refills need no division. */
struct xg_bucket {
    __u64 last_ns;
    __u64 pkt_tokens;
    __u64 byte_tokens;
    __u64 syn_last_ns;
    __u64 syn_tokens;
};

/* xg_dstbkt_hash value (per protected address:port, all sources): a packet bucket. */
struct xg_dst_bucket {
    __u64 last_ns;
    __u64 pkt_tokens;
};

/* xg_ban_lru value: a dynamic ban written by the data path; xg_opban_hash value: an operator's
 * ban (`xdpguard ban add`), in a plain hash the data path's LRU churn cannot evict. */
struct xg_ban {
    __u64 expires_ns;         /* CLOCK_MONOTONIC ns */
    __u64 hits;               /* packets dropped by this ban */
    __u32 reason;             /* the XG_REASON_* that caused it */
    __u32 verified_hits;      /* of hits, packets of verified sources (knowngood.h); was `reserved` (0) */
};

/* xg_synwin_arr value: SYNs seen in the current 1 s window, per protected address slot, and
 * until when the defence stays up once the threshold was crossed (so the first threshold SYNs of
 * every new second do not reach the service while a flood goes on). */
struct xg_synwin {
    __u64 window_start_ns;
    __u64 count;
    __u64 defend_until_ns;
};

/* xg_synseen_lru value: an unauthenticated source's first dropped SYN. Only a retransmission
 * of that very SYN (same source port and sequence number) authenticates the source, so a
 * spoofed flood that reuses sources with fresh ports or sequence numbers never does. */
struct xg_synseen {
    __u64 first_ns;
    __u32 seq;                /* TCP sequence number, as on the wire */
    __u16 sport;
    __u16 reserved;
};

/* xg_synauth_lru value: a source that authenticated by retransmission. Soft state (an LRU): a
 * retransmission proves no address (a flood that sends every SYN twice passes it), so it only
 * lets at most XG_SYNAUTH_SYNS SYNs of the source through to the kernel until until_ns; the
 * address is proven when one of those handshakes completes (knowngood.h: verified). */
struct xg_synauth {
    __u64 until_ns;
    __u32 syns_left;          /* SYNs this authentication still admits */
    __u32 reserved;           /* 0 */
};

/* xg_cookie_pcpu[0] value, per CPU (steps/syncookie.h): what the reason-14 verdicts were. */
struct xg_cookie_stats {
    __u64 synack_sent;        /* SYNs answered with a cookie SYN-ACK (XDP_TX) */
    __u64 ack_valid;          /* ACKs of no recorded connection whose cookie was good: passed */
    __u64 ack_bad;            /* ACKs of no recorded connection whose cookie was bad: dropped */
    __u64 failed;             /* SYNs the SYN-ACK could not be built for (dropped) */
};

/* xg_goodsrc_hash value (knowngood.h): a verified source, learned on tc egress: a TCP
 * connection with it established, or (peacetime only) a UDP answer sent to it. Grown at its end
 * from the 8-byte layout of the previous wave (migrate.py copies; old entries have kind 0 and
 * are not trusted, the sweep removes them). */
#define XG_VF_TCP 1               /* completed a handshake (or a cookie ACK) through us */
/* xg_vbloom_arr: one bit per hash of a verified source (xg_src_hash, as the ban bloom), set by
 * egress whenever it learns or refreshes one, rebuilt by the controller's sweep: a clear bit
 * spares XDP the xg_goodsrc_hash lookup (a spoofed flood from random sources mostly meets
 * clear bits). */
#define XG_GOODBLOOM_BITS 1048576
#define XG_VF_UDP 2               /* a UDP service answered it in peacetime */
#define XG_VF_L7 4                /* passed a layer-7 challenge (HAProxy's cookie): written by the controller with
                                   * XG_VF_TCP; XDP reads only the TCP/UDP bits, egress keeps this one */
struct xg_goodsrc {
    __u64 expires_ns;         /* CLOCK_MONOTONIC ns; refreshed (at most once a minute) by egress */
    __u32 kind;               /* XG_VF_* (written by egress only) */
    __u32 reserved;           /* 0 */
    __u64 last_ns;            /* the privilege bucket (written by XDP): refill stamp */
    __u64 tokens;             /* packets that may still use the privilege, nano-units */
};

/* xg_vcfg_arr[0]: verified-client settings (0 = the XG_VERIFIED_* / XG_UDP_PEACE_* default). */
#define XG_VC_NO_UDP_LEARN 1      /* the controller saw an attack: no UDP learning anywhere */
#define XG_VC_NO_BUDGET 2         /* no admission budget for unverified traffic anywhere (budget.h: UDP and SYNs) */
struct xg_verify_config {
    __u64 tcp_pps;            /* privilege bucket of a TCP-verified source, packets/s */
    __u64 tcp_burst;
    __u64 udp_pps;            /* of a UDP-only verified source */
    __u64 udp_burst;
    __u32 udp_peace_pps;      /* UDP packets/s to one protected address above which it learns nothing */
    __u32 flags;              /* XG_VC_* */
    __u32 spoof_ban_s;        /* the longest data-path ban from spoofable evidence (rate steps) */
    __u32 budget_udp_pps;     /* unverified UDP packets/s per service (budget.h; 0: XG_BUDGET_UDP_PPS); was `reserved` */
    __u32 budget_tcp_syns;    /* unverified SYNs/s per TCP service below the SYN threshold (budget.h; 0: XG_BUDGET_TCP_SYNS) */
    __u32 reserved;           /* 0 */
};

/* xg_vdrop_pcpu: "first, do no harm", per CPU: packets of verified sources that a filter (slot =
 * its index in the filter table, 0..XG_FILTERS_MAX-1) or a step (slot XG_FILTERS_MAX + reason)
 * dropped, or would have dropped but let pass because they were verified (exempted). */
#define XG_VDROP_SLOTS (XG_FILTERS_MAX + XG_REASON_MAX)
struct xg_vdrop {
    __u64 dropped;
    __u64 exempted;
};

/* xg_dpstate_arr[0]: state only the data path sets (the controller never rewrites it, so an
 * update of xg_config cannot lose it); the controller clears bits when their cause is gone. */
#define XG_DP_HAS_BANS (1ULL << 0)  /* xg_ban_lru or xg_opban_hash may hold entries */
#define XG_DP_OPBANS_EMPTY (1ULL << 1)  /* the controller found xg_opban_hash empty (sweep); `ban add` clears it */
#define XG_DP_BAN_BLOOM (1ULL << 2)  /* xg_banbloom_arr holds a bit for every ban (the controller built it) */

/* xg_banbloom_arr: one bit per hash of a banned source (xg_ban_bit; policy.ban_bloom_bit), set
 * before a ban is written, cleared only when no ban is left: a clear bit means "not banned". */
#define XG_BANBLOOM_BITS 1048576

struct xg_dpstate {
    __u64 flags;              /* XG_DP_* */
};

/* xg_srcsk_arr: the source sketch in front of xg_bucket_lru (steps/ratelimit.h). Slot =
 * the source's hash (the one of xg_ban_bit, policy.ban_bloom_bit) & (XG_SK_SLOTS - 1). A slot
 * counts the packets, bytes and SYNs its sources passed without a bucket ("uncharged") in the
 * current and the previous window of 2^XG_SK_SHIFT ns (1.07 s), by window parity. While the
 * uncharged counts of both windows stay within K = min(burst / 2, rate per second) of every
 * limit in force, a packet needs no bucket: no token bucket of that burst and rate could drop
 * any of them. Past K the packet takes the bucket path (a bucket created, or found, is first
 * charged with the slot's uncharged counts: never more lenient than the bucket alone), and the
 * slot turns hot: every source of the slot takes the bucket path until a whole window passes
 * without one doing so (hot_until is refreshed by each). */
#ifndef XG_SK_SLOTS
#define XG_SK_SLOTS 65536            /* power of two */
#endif
#define XG_SK_SHIFT 30               /* window: 2^30 ns, at least 1 s (K <= rate * window) */
#define XG_SK_MAX 0x7fffffff         /* K cap; uncharged counts saturate at 2^32 - 1 */

struct xg_srcsk {
    __u32 epoch;              /* window (now >> XG_SK_SHIFT) the counts of parity epoch & 1 are of */
    __u32 hot_until;          /* every source of the slot takes the bucket path through this window */
    __u32 pkts[2];            /* uncharged packets, by window parity */
    __u32 bytes[2];           /* uncharged frame bytes */
    __u32 syns[2];            /* uncharged TCP SYNs */
};

/* ---- TCP state validation (steps/tcpstate.h) ---- */

/* Key of xg_flow_lru and xg_embryo_lru: one TCP connection of a protected address, seen from
 * the client (v4 uses the first 4 bytes of each address, rest zero). */
struct xg_flow_key {
    __u8 client[16];          /* the remote end, network byte order */
    __u8 prot[16];            /* the protected address */
    __u16 client_port;        /* host byte order */
    __u16 prot_port;
    __u8 family;              /* 4 or 6 */
    __u8 reserved[3];         /* 0 */
};

/* xg_flow.state: what the protected side last sent. */
#define XG_FLOW_EST 1             /* data / ACK: established */
#define XG_FLOW_FIN 2             /* FIN sent: closing (sticky until a new SYN-ACK) */
#define XG_FLOW_RST 3             /* RST sent */
#define XG_FLOW_SYN 4             /* SYN or SYN-ACK sent: half-open (xg_embryo_lru) */

/* Value of xg_flow_lru and xg_embryo_lru. */
struct xg_flow {
    __u64 expires_ns;         /* CLOCK_MONOTONIC ns; XDP admits the connection's packets until then */
    __u32 state;              /* XG_FLOW_* */
    __u32 reserved;           /* 0 */
};

/* Defaults when xg_tcpcfg_arr holds 0: idle timeouts, refreshed by every packet the protected
 * side sends (at most one map write per connection per second). */
#define XG_TS_EST_TIMEOUT_S 10800
#define XG_TS_FIN_TIMEOUT_S 120
#define XG_TS_RST_TIMEOUT_S 10
#define XG_TS_SYN_TIMEOUT_S 20

/* xg_tcpcfg_arr[0]: TCP state validation settings (0 = the default above). */
struct xg_tcpstate_config {
    __u64 grace_until_ns;     /* until then a packet of no known connection passes (attach grace) */
    __u32 est_timeout_s;
    __u32 fin_timeout_s;
    __u32 rst_timeout_s;
    __u32 syn_timeout_s;
};

/* Feature filter actions. */
#define XG_FA_DROP     1
#define XG_FA_PASS     2   /* pass, skipping the later steps (rate limits, SYN defence) */
#define XG_FA_DROP_BAN 3   /* drop and ban the source for ban_s seconds */
#define XG_FA_MITIGATE 4   /* drop as XG_REASON_MITIGATION: a filter the daemon installed */

/* Where a filter's payload offset counts from. */
#define XG_FB_L3      0
#define XG_FB_L4      1
#define XG_FB_PAYLOAD 2    /* after the TCP header (doff), UDP header (8) or ICMP header (8) */

/* xg_filters_arr value: one packet feature filter; all given conditions must hold. */
struct xg_filter {
    __u8 proto;               /* 0 = any, else IPPROTO_* (ICMP matches ICMPv6 too) */
    __u8 action;              /* XG_FA_* */
    __u8 tcp_flags_mask;      /* match (flags & mask) == value; mask 0 = any */
    __u8 tcp_flags_value;
    __u8 ttl_min;             /* TTL / hop limit range, inclusive */
    __u8 ttl_max;
    __u8 payload_len;         /* 0..16 bytes to compare */
    __u8 payload_base;        /* XG_FB_* */
    __u16 sport_min;          /* inclusive ranges; ports match only TCP/UDP with an L4 header */
    __u16 sport_max;
    __u16 dport_min;
    __u16 dport_max;
    __u16 len_min;            /* frame length range (bytes as XDP sees them), inclusive */
    __u16 len_max;
    __u16 payload_off;        /* 0..XG_PAYLOAD_OFF_MAX */
    __u16 ban_s;              /* XG_FA_DROP_BAN */
    __u8 payload[16];
    __u8 payload_mask[16];
};

/* ---- feature filters as per-field bit vectors (steps/feature.h) ----
 * The controller compiles the ordered filter list into "which filters accept this value" words,
 * one per value of each field (bit i = filter i), ANDs them in the data path, and compares
 * payload only for the survivors; the lowest set bit is the first match, so order is kept and
 * the cost does not grow with the number of filters. Two generations: the controller writes the
 * one not in use, then flips xg_fsel_arr (a packet never sees a half-written set). */
#define XG_FV_PROTO   0        /* 256 words: IP protocol / IPv6 next header */
#define XG_FV_TTL     256      /* 256: TTL / hop limit */
#define XG_FV_FLAGS   512      /* 257: TCP flags of a TCP packet with its header; XG_FV_NOTCP: others */
#define XG_FV_SPORT   1024     /* 65537: source port of TCP/UDP with an L4 header; XG_FV_NOPORT: others */
#define XG_FV_DPORT   66561    /* 65537: destination port, the same way */
#define XG_FV_LEN     132098   /* 65537: frame length; XG_FV_NOPORT: longer than 65535 */
#define XG_FV_SLOTS   197635   /* words per generation */
#define XG_FV_NOTCP   256
#define XG_FV_NOPORT  65536
#define XG_FGENS      2

/* xg_fhead_arr value, one per generation. */
struct xg_fhead {
    __u64 live;               /* bit i: slot i holds a filter */
    __u64 payload;            /* bit i: filter i also compares payload bytes (xg_fdef_arr) */
    __u32 count;              /* filters in this generation */
    __u32 reserved;           /* the controller's stamp of the filters its words hold (0: none); not read here */
};

/* ---- the payload index (steps/feature.h) ----
 * Payload conditions are classified the same way, byte by byte: the controller picks up to
 * XG_PPOS_MAX byte positions (a base XG_FB_* and an offset from it) that the payload filters
 * test, and for each position and byte value writes the word of filters that accept it (bit i:
 * filter i accepts it, or is not indexed, or does not test that position); XG_PV_ABSENT stands
 * for a byte the packet does not have. A filter whose positions do not fit is compared the old
 * way (xg_fdef_arr). Two generations, switched with the header words (xg_fsel_arr). */
#define XG_PPOS_MAX   32       /* byte positions the index reads */
#define XG_PV_VALUES  257      /* words per position: byte values 0..255, then XG_PV_ABSENT */
#define XG_PV_ABSENT  256
#define XG_PV_SLOTS   (XG_PPOS_MAX * XG_PV_VALUES)   /* words per generation */
#define XG_PPOS_OFF_BITS 12    /* xg_phead.pos: base << XG_PPOS_OFF_BITS | offset */

/* xg_phead_arr value, one per generation. */
struct xg_phead {
    __u64 indexed;            /* bit i: filter i's payload condition is decided by the index alone */
    __u32 npos;               /* positions in use, 0..XG_PPOS_MAX */
    __u32 reserved;           /* 0 */
    __u16 pos[XG_PPOS_MAX];   /* position k: XG_FB_* << XG_PPOS_OFF_BITS | byte offset from that base */
};

/* xg_fsel_arr[0]: the generation the data path reads. */
struct xg_fsel {
    __u32 gen;                /* 0 or 1 */
    __u32 reserved;           /* the last writer's random tag (0: a write under way); not read here */
};

/* xg_ports_hash key: an open port of a protected address (v4 uses addr[0..3], rest zero). */
struct xg_port_key {
    __u8 addr[16];        /* protected address, network byte order */
    __u16 port;           /* destination port, host byte order */
    __u8 proto;           /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 family;          /* 4 or 6 */
};

/* xg_ports_hash value: the service record of (address, proto, port), the one hash lookup of a
 * TCP/UDP packet to an address with a port policy or per-port limits (steps/port.h). An open
 * port has an owner bit (the low bits: who opened it); a port with limits of its own only
 * XG_PORT_LIMITS. What the record carries beyond the flags lives in xg_svc_arr[slot]. */
struct xg_port_value {
    __u64 flags;          /* owner bits (the controller's), XG_PORT_BY_HTTP (steps/geo.h), XG_PORT_* below */
    __u32 slot;           /* xg_svc_arr index, valid with XG_PORT_SLOT (a record of an older */
    __u32 reserved;       /* controller, grown by an upgrade, has none until the refill) */
};
#define XG_PORT_BY_HTTP (1ULL << 2)  /* an HTTP service HAProxy serves on the protective IP (l7/) */
#define XG_PORT_SLOT (1ULL << 62)    /* slot is valid: the service's destination bucket lives there */
#define XG_PORT_LIMITS (1ULL << 63)  /* xg_svc_arr[slot].lim overrides the address's limits */
#define XG_PORT_OWNERS (XG_PORT_SLOT - 1)  /* bits 0..61: open when any is set */

/* xg_svc_arr value: what a service record carries besides its flags, in an array (an index, not
 * a second hash lookup): the port's limits (with XG_PORT_LIMITS) and its destination bucket
 * (last_ns 0: not used yet, filled like a new bucket on the first packet). */
struct xg_svc {
    struct xg_limits lim;
    struct xg_dst_bucket bkt;
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

/* ---- region (geo) blocking (steps/geo.h) ----
 * xg_geo4_lpm / xg_geo6_lpm: source prefix -> country index: one trie per family for every
 * protected address, holding the prefixes of the countries any geo rule names. A country code of two
 * characters [0-9A-Z] has index c0 * 36 + c1 (digits 0..9, letters 10..35); 0 ("00") = no
 * country known. xg_geoset_arr[slot]: which countries the address's rule names (bit per index). */
#define XG_GEO_CODES 1296            /* 36 * 36 country indexes */
#define XG_GEO_WORDS 32              /* __u64 words holding XG_GEO_CODES bits (a power of two) */
#ifndef XG_GEO_MAX
#define XG_GEO_MAX 2097152           /* prefixes per geo trie */
#endif


/* xg_geoset.flags */
#define XG_GEO_ONLY (1ULL << 0)      /* drop every source NOT in a named country (unknown ones too) */
#define XG_GEO_CC   (1ULL << 1)      /* mode cc: TCP to a port HAProxy serves (XG_PORT_BY_HTTP) passes, and
                                      * HAProxy challenges those sources; the rest is dropped here */

/* xg_geoset_arr value: one per protected address slot (xg_syn_policy.slot). */
struct xg_geoset {
    __u64 flags;                     /* XG_GEO_* */
    __u64 bits[XG_GEO_WORDS];        /* bit i: country index i is named by the rule */
};

/* ---- sampling (sample.h): 1 in N verdicts per CPU into the xg_samples ring buffer ---- */

#ifndef XG_SAMPLE_SNAPLEN
#define XG_SAMPLE_SNAPLEN 128        /* packet bytes copied into a sample, at most (a power of 2) */
#endif
#ifndef XG_SAMPLE_RING_PAGES
#define XG_SAMPLE_RING_PAGES 128     /* xg_samples size in pages (a power of 2) */
#endif

/* xg_sample_cfg[0]: run-time sampling switch. */
struct xg_sample_config {
    __u32 sample_every;   /* sample 1 in N non-bypass verdicts per CPU; 0 = off */
    __u32 reserved;       /* 0 */
};

/* xg_sample_pcpu[0] value, per CPU. */
struct xg_sample_state {
    __u64 countdown;      /* unused since sampling keys off the stats counters; kept for layout */
    __u64 taken;          /* samples written to the ring */
    __u64 lost;           /* samples dropped: the ring was full */
};

/* One xg_samples record. */
struct xg_sample {
    __u64 ts_ns;          /* bpf_ktime_get_ns() when sampled */
    __u32 sample_every;   /* N in force: this sample stands for N verdicts */
    __u32 pkt_len;        /* packet length in bytes */
    __u32 cap_len;        /* bytes of the packet in data[] */
    __u32 reserved;       /* 0 */
    __u8 src[16];         /* source address, network byte order (v4 in src[0..3]) */
    __u8 dst[16];         /* destination address, same */
    __u16 sport;          /* TCP/UDP source port, host byte order; 0 otherwise */
    __u16 dport;          /* TCP/UDP destination port, host byte order; 0 otherwise */
    __u8 kind;            /* XG_KIND_* */
    __u8 reason;          /* XG_REASON_* */
    __u8 proto;           /* IP protocol / IPv6 next header */
    __u8 family;          /* 4, 6, or 0 when the L3 header did not parse */
    __u8 data[XG_SAMPLE_SNAPLEN]; /* the first cap_len bytes of the packet */
};

/* ---- UDP watermark (watermark.h; the format: xdpguard/sdk/watermark.py) ----
 * xg_wm_hash: (protected address, UDP, port) → struct xg_wm, the keys and parameters of a
 * watermarked service. A datagram to it must end in a 12-byte mark: epoch (__be32, unix seconds
 * / step_s) and SipHash-2-4(key, epoch | data length | port | the first window bytes of the data,
 * zero-padded). xg_wm_pcpu: per-CPU packet counters by XG_WM_CNT_*. */
#define XG_WM_TAG_LEN    12          /* bytes of the mark at the end of the UDP payload */
#define XG_WM_WINDOW_MAX 64          /* payload bytes a mark may bind (a multiple of 8) */
#ifndef XG_WM_MAX
#define XG_WM_MAX 4096               /* watermarked services */
#endif
#define XG_WM_CNT_PASS     0         /* valid mark (current key): stripped, passed */
#define XG_WM_CNT_PASS_OLD 1         /* valid mark under the previous key (rotation overlap) */
#define XG_WM_CNT_SHORT    2         /* no room for a mark, lengths disagree, or a fragment */
#define XG_WM_CNT_STALE    3         /* epoch outside [now - skew, now + 1] */
#define XG_WM_CNT_BAD      4         /* wrong MAC */
#define XG_WM_CNT_MAX      8

/* xg_wm_hash value. Keys are two little-endian __u64 halves of a 16-byte SipHash key. */
struct xg_wm {
    __u64 k0;                 /* current key */
    __u64 k1;
    __u64 pk0;                /* previous key: accepted while unix seconds < prev_until_s */
    __u64 pk1;
    __u64 prev_until_s;       /* 0: no previous key */
    __u64 clock_off_ns;       /* unix time - CLOCK_MONOTONIC (bpf_ktime_get_ns), set by the controller */
    __u32 step_s;             /* seconds per epoch (>= 1) */
    __u32 window;             /* payload bytes bound by the MAC, 0..XG_WM_WINDOW_MAX, a multiple of 8 */
    __u32 skew;               /* epochs accepted before the current one (a mark lives (skew + 1) * step_s) */
    __u32 flags;              /* reserved, 0 */
};

#endif /* XDPGUARD_ABI_H */
