/* parsing.h — bounds-checked cursor parsing of Ethernet, VLAN, IPv4, IPv6, TCP, UDP, ICMP.
 *
 * One contract for every parser: check `hdr + 1 > data_end` (and variable lengths such as
 * ihl*4 and doff*4) before reading, advance the cursor past the header, and return the next
 * protocol, or -1 when the header is truncated or malformed.
 */
#ifndef XDPGUARD_PARSING_H
#define XDPGUARD_PARSING_H

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

/* Returns the next header after the fixed IPv6 header, or -1. Extension headers are not
 * walked here: XXX: a packet whose first next-header is an extension is treated as "other". */
static __always_inline int parse_ip6hdr(struct xg_cursor *c, void *data_end, struct ipv6hdr **ip6h)
{
    struct ipv6hdr *h = c->pos;
    if ((void *)(h + 1) > data_end)
        return -1;
    c->pos = h + 1;
    *ip6h = h;
    return h->nexthdr;
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
