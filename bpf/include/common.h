/* common.h — what every step shares: the kernel headers, the ABI, the packet context (struct
 * xg_pkt), the step verdicts, TCP flag bits, the clock and branch-free arithmetic.
 *
 * Every quoted include of bpf/ is relative to bpf/include (the loader inlines them from there,
 * dataplane.render_source; the compiler finds them with -I bpf/include).
 */
#ifndef XDPGUARD_COMMON_H
#define XDPGUARD_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "abi.h"

/* Step verdicts that are not reasons: go on with the next step; answer with a cookie SYN-ACK. */
#define XG_CONTINUE 0xffffffff
#define XG_SYNCOOKIE_TX 0xfffffffe

#define ONE_SEC_NS 1000000000ULL
#define XG_TOKEN 1000000000ULL     /* one packet (or byte) in bucket nano-units */

/* TCP flag bits (byte 13 of the header). */
#define XG_TCP_FIN 0x01
#define XG_TCP_SYN 0x02
#define XG_TCP_RST 0x04
#define XG_TCP_ACK 0x10

/* What the steps need to know about a packet to a protected address. */
struct xg_pkt {
    struct xg_src_key src;
    struct xg_port_key dst;    /* addr, family; proto/port filled for TCP/UDP with an L4 header */
    __u16 l3_off;              /* offsets from the frame start, for feature filters; */
    __u16 l4_off;              /* 0 = absent (the Ethernet header is never empty) */
    __u16 payload_off;         /* after the L4 header */
    __u32 len;                 /* frame length */
    __u16 sport;
    __u16 dport;
    __u8 l4proto;
    __u8 ttl;
    __u8 tcp_flags;
    __u8 is_frag;
    __u8 has_l4;               /* an L4 header was parsed (not for non-first fragments) */
    __u32 tcp_seq;             /* TCP sequence number as on the wire (SYN authentication) */
    __u8 vstate;               /* knowngood.h kg_verified: 0 not looked up, 1 not verified, 2 verified */
    __u8 est;                  /* admitted by an established connection (steps/tcpstate.h): not spoofable */
    __u8 filter_idx;           /* 1 + the index of the filter that dropped it (do-no-harm counters) */
    __u8 svc_lim;              /* the service record's limits apply (steps/port.h) */
    __u32 svc;                 /* 1 + the service record's xg_svc_arr slot; 0: none (steps/port.h) */
};

/* The packet's clock, read once (0: not read yet). */
static __always_inline __u64 xg_now(__u64 *now)
{
    if (!*now)
        *now = bpf_ktime_get_ns();
    return *now;
}

/* A source's hash: its bit in xg_banbloom_arr is the low XG_BANBLOOM_BITS bits, its slot in
 * xg_srcsk_arr the low XG_SK_SLOTS ones (policy.ban_bloom_bit computes the same). */
static __always_inline __u32 xg_src_hash(struct xg_src_key *k)
{
    __u64 a0, a1;
    __builtin_memcpy(&a0, k->addr, 8);
    __builtin_memcpy(&a1, k->addr + 8, 8);
    __u64 h = (a0 * 0x9E3779B97F4A7C15ULL) ^ (a1 * 0xC2B2AE3D27D4EB4FULL) ^ k->family;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return (__u32)h;
}

/* Branch-free arithmetic: no branch, so no verifier state of its own. */

/* min(a, b) for a, b below 2^63. */
static __always_inline __u64 xg_min(__u64 a, __u64 b)
{
    __u64 d = a - b;
    return b + (d & -(d >> 63));
}

/* 1 when n > k (both below 2^63). */
static __always_inline __u64 xg_over(__u64 n, __u64 k)
{
    return (k - n) >> 63;
}

/* 1 when a == b (both below 2^63). */
static __always_inline __u64 xg_eq(__u64 a, __u64 b)
{
    __u64 d = a ^ b;
    return ((d | -d) >> 63) ^ 1;
}

/* x, or dflt when x is 0. */
static __always_inline __u64 xg_or_default(__u64 x, __u64 dflt)
{
    return x | (dflt & -xg_eq(x, 0));
}

#endif /* XDPGUARD_COMMON_H */
