/* parsing.h — bounds-checked cursor parsing of Ethernet, VLAN, IPv4, IPv6, TCP, UDP, ICMP.
 *
 * One contract for every parser: check `hdr + 1 > data_end` (and variable lengths such as
 * ihl*4 and doff*4) before reading, advance the cursor past the header, and return the next
 * protocol, or -1 when the header is truncated or malformed.
 */
#ifndef XDPGUARD_PARSING_H
#define XDPGUARD_PARSING_H

#include "common.h"

struct xg_cursor {
    void *pos;
};

struct xg_vlan_hdr {
    __be16 tci;
    __be16 encap_proto;
};

/* Returns the EtherType in network byte order after up to XG_VLAN_MAX VLAN tags, or -1. */
static __always_inline int parse_ethhdr(struct xg_cursor *c, void *data_end, struct ethhdr **eth)
{
    struct ethhdr *h = c->pos;
    if ((void *)(h + 1) > data_end)
        return -1;
    c->pos = h + 1;
    *eth = h;
    __be16 proto = h->h_proto;

#pragma unroll
    for (int i = 0; i < XG_VLAN_MAX; i++) {
        if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
            break;
        struct xg_vlan_hdr *v = c->pos;
        if ((void *)(v + 1) > data_end)
            return -1;
        proto = v->encap_proto;
        c->pos = v + 1;
    }
    return proto;
}

/* Returns the L4 protocol, or -1. The cursor lands on the L4 header (ihl honoured). */
static __always_inline int parse_iphdr(struct xg_cursor *c, void *data_end, struct iphdr **iph)
{
    struct iphdr *h = c->pos;
    if ((void *)(h + 1) > data_end)
        return -1;
    int hdrsize = h->ihl * 4;
    if (hdrsize < (int)sizeof(*h))
        return -1;
    if (c->pos + hdrsize > data_end)
        return -1;
    c->pos += hdrsize;
    *iph = h;
    return h->protocol;
}

/* Returns the next header after the fixed IPv6 header, or -1. The extension headers that may
 * follow are walked by parse_ip6_ext(). */
static __always_inline int parse_ip6hdr(struct xg_cursor *c, void *data_end, struct ipv6hdr **ip6h)
{
    struct ipv6hdr *h = c->pos;
    if ((void *)(h + 1) > data_end)
        return -1;
    c->pos = h + 1;
    *ip6h = h;
    return h->nexthdr;
}

#define XG_NEXTHDR_HOP      0
#define XG_NEXTHDR_ROUTING  43
#define XG_NEXTHDR_FRAGMENT 44
#define XG_NEXTHDR_DEST     60

/* Hop-by-hop, routing and destination options headers share this prefix; length (hdrlen+1)*8. */
struct xg_ip6_opt_hdr {
    __u8 nexthdr;
    __u8 hdrlen;
};

static __always_inline int xg_ip6_is_ext(int nexthdr)
{
    return nexthdr == XG_NEXTHDR_HOP || nexthdr == XG_NEXTHDR_ROUTING || nexthdr == XG_NEXTHDR_DEST ||
           nexthdr == XG_NEXTHDR_FRAGMENT;
}

struct xg_frag6_hdr {
    __u8 nexthdr;
    __u8 reserved;
    __be16 frag_off;           /* offset (13 bits, in 8-byte units) << 3 | M flag */
    __be32 identification;
};

/* Walk up to XG_IPV6_EXT_MAX option headers (hop-by-hop, routing, destination options) from
 * the cursor, starting with next header `nexthdr`. Returns the next header after them, or -1
 * when one is truncated or the chain is longer than XG_IPV6_EXT_MAX. (The tc egress recorder's
 * walk: our own TCP segments carry no fragment header.) */
static __always_inline int parse_ip6_ext(struct xg_cursor *c, void *data_end, int nexthdr)
{
#pragma unroll
    for (int i = 0; i < XG_IPV6_EXT_MAX; i++) {
        if (nexthdr != XG_NEXTHDR_HOP && nexthdr != XG_NEXTHDR_ROUTING && nexthdr != XG_NEXTHDR_DEST)
            return nexthdr;
        struct xg_ip6_opt_hdr *h = c->pos;
        if ((void *)(h + 1) > data_end)
            return -1;
        int len = ((int)h->hdrlen + 1) * 8;
        if (c->pos + len > data_end)
            return -1;
        nexthdr = h->nexthdr;
        c->pos += len;
    }
    return xg_ip6_is_ext(nexthdr) && nexthdr != XG_NEXTHDR_FRAGMENT ? -1 : nexthdr;  /* -1: over-long */
}

/* The XDP walk: up to XG_IPV6_EXT_MAX extension headers — hop-by-hop, routing, destination
 * options and fragment, in any order — from the cursor, starting with next header `nexthdr`.
 * Returns the upper-layer protocol (anything else: TCP, UDP, ICMPv6, ESP, ...), or -1 when a
 * header is truncated or the chain is longer than XG_IPV6_EXT_MAX.
 * A fragment header sets *frag to XG_FRAG_SEEN | its offset/flags word (host order; a non-first
 * fragment has (*frag & 0xFFF8) != 0) and *frag_nh to its next header. After a non-first
 * fragment what follows is fragment data: the walk ends there (its next header becomes 59, "no
 * next header", without a branch of its own).
 * Verifier note: this function's shape was chosen by measurement. Every distinct exit state of
 * the parse is walked again through the 64-filter loop; an early return per fragment case or a
 * second walk after the fragment header pushed the program past the 1M-instruction limit, this
 * one costs about 15K instructions more than no walk (6.18). */
#define XG_FRAG_SEEN 0x10000
#define XG_NEXTHDR_NONE 59
static __always_inline int parse_ip6_chain(struct xg_cursor *c, void *data_end, int nexthdr, __u32 *frag, int *frag_nh)
{
#pragma unroll
    for (int i = 0; i < XG_IPV6_EXT_MAX; i++) {
        if (nexthdr == XG_NEXTHDR_FRAGMENT) {
            struct xg_frag6_hdr *fh = c->pos;
            if ((void *)(fh + 1) > data_end)
                return -1;
            c->pos = fh + 1;
            __u32 w = XG_FRAG_SEEN | bpf_ntohs(fh->frag_off);
            *frag = w;
            *frag_nh = fh->nexthdr;
            nexthdr = (w & 0xFFF8) ? XG_NEXTHDR_NONE : fh->nexthdr;
            continue;
        }
        if (nexthdr != XG_NEXTHDR_HOP && nexthdr != XG_NEXTHDR_ROUTING && nexthdr != XG_NEXTHDR_DEST)
            return nexthdr;
        struct xg_ip6_opt_hdr *h = c->pos;
        if ((void *)(h + 1) > data_end)
            return -1;
        int len = ((int)h->hdrlen + 1) * 8;
        if (c->pos + len > data_end)
            return -1;
        nexthdr = h->nexthdr;
        c->pos += len;
    }
    return xg_ip6_is_ext(nexthdr) ? -1 : nexthdr;
}

/* Returns the TCP header length in bytes, or -1. */
static __always_inline int parse_tcphdr(struct xg_cursor *c, void *data_end, struct tcphdr **tcph)
{
    struct tcphdr *h = c->pos;
    if ((void *)(h + 1) > data_end)
        return -1;
    int len = h->doff * 4;
    if (len < (int)sizeof(*h))
        return -1;
    if (c->pos + len > data_end)
        return -1;
    c->pos += len;
    *tcph = h;
    return len;
}

/* Returns the UDP header length (8), or -1. */
static __always_inline int parse_udphdr(struct xg_cursor *c, void *data_end, struct udphdr **udph)
{
    struct udphdr *h = c->pos;
    if ((void *)(h + 1) > data_end)
        return -1;
    c->pos = h + 1;
    *udph = h;
    return sizeof(*h);
}

/* ICMP and ICMPv6 share the 4-byte type/code/checksum prefix; that is all we read. */
struct xg_icmp_prefix {
    __u8 type;
    __u8 code;
    __sum16 checksum;
};

static __always_inline int parse_icmp(struct xg_cursor *c, void *data_end, struct xg_icmp_prefix **icmph)
{
    struct xg_icmp_prefix *h = c->pos;
    if ((void *)(h + 1) > data_end)
        return -1;
    c->pos = h + 1;
    *icmph = h;
    return h->type;
}

#endif /* XDPGUARD_PARSING_H */
