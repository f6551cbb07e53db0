/* steps/fastfwd.h — the forwarding fast path (experimental, compiled in only with XG_FWD_FAST).
 *
 * nftables stays the slow path: the first packets of a forwarded flow go through conntrack, DNAT
 * and masquerade as before. The controller then reads conntrack (fastfwd.py, through
 * guard.write_fastfwd) and writes, per established flow, two entries into xg_fwd_lru:
 *
 *   client → protective IP   (C:cp → P:pp)  becomes  (M:mp → B:bp)   direction XG_FWD_IN
 *   backend → masquerade     (B:bp → M:mp)  becomes  (P:pp → C:cp)   direction XG_FWD_OUT
 *
 * (M:mp is the source conntrack chose: the masquerade address and port, or the client itself in
 * routed mode.) step_fastfwd rewrites such a packet (addresses, ports, TTL, checksums), asks the
 * kernel's FIB for the next hop (bpf_fib_lookup: the MACs and the egress interface, MTU checked)
 * and redirects it, so neither direction meets nftables, conntrack or the stack. The main program
 * calls it for a packet that passed every step as `clean`; xdpguard_fwd_return (on the backend-side
 * interface) for every packet.
 *
 * What stays on the slow path (the packet passes unchanged): IPv6, VLAN tags, IP options,
 * fragments, TTL ≤ 1, a FIB answer other than success (no neighbour yet, MTU exceeded, no route)
 * and TCP SYN/FIN/RST: a SYN, FIN or RST also deletes both entries of its flow, so conntrack sees
 * the end of the connection and every later packet (conntrack has not seen the fast-pathed
 * segments: the protector's namespace needs nf_conntrack_tcp_be_liberal=1, else it marks the FIN
 * out of window, invalid, and no NAT applies).
 *
 * XXX: the return program does the tc egress recorder's work for the packets it redirects
 * (ts_egress on the rewritten packet: XDP-redirected frames never meet tc egress), so the TCP state
 * step keeps admitting the client. Per-rule nft traffic counters do not see fast-pathed packets:
 * xg_fwd_pcpu counts them, per direction.
 */
#ifndef XDPGUARD_STEP_FASTFWD_H
#define XDPGUARD_STEP_FASTFWD_H

#include "common.h"
#include "maps.h"
#include "parsing.h"

#ifdef XG_FWD_FAST

#ifndef XG_FWD_FLOWS_MAX
#define XG_FWD_FLOWS_MAX 131072      /* fast-path entries (two per flow; LRU) */
#endif
#ifndef XG_FWD_RULES_MAX
#define XG_FWD_RULES_MAX 4096        /* forwarding rules with fast-path counters */
#endif

#define XG_FWD_IN  1                 /* client → backend (rewritten to the backend) */
#define XG_FWD_OUT 2                 /* backend → client (rewritten back) */

/* xg_fwd_pcpu slots: packets and bytes per outcome. */
#define XG_FWD_CNT_IN      0         /* redirected towards a backend */
#define XG_FWD_CNT_OUT     1         /* redirected back towards a client */
#define XG_FWD_CNT_END     2         /* SYN/FIN/RST of a fast flow: entries deleted, slow path */
#define XG_FWD_CNT_FIB     3         /* FIB lookup did not succeed (no neighbour, MTU): slow path */
#define XG_FWD_CNT_MAX     4

#ifndef AF_INET
#define AF_INET 2
#endif

struct xg_fwd_key {
    __u32 saddr;                     /* network order, as on the wire */
    __u32 daddr;
    __u16 sport;                     /* network order */
    __u16 dport;
    __u8 proto;                      /* IPPROTO_TCP / IPPROTO_UDP */
    __u8 pad[3];
};

struct xg_fwd {
    __u32 saddr;                     /* what the packet becomes (network order) */
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u32 dir;                       /* XG_FWD_IN / XG_FWD_OUT */
    __u64 seen_ns;                   /* bpf_ktime_get_ns of a recent packet sent on the fast path
                                        (updated at most once per XG_FWD_SEEN_NS): the controller
                                        refreshes conntrack's timeout of an active flow from it */
    __u32 rule_id;                   /* the forwarding rule's id (crc32 of its key; 0: none): its
                                        xg_fwd_rule counter counts the flow's fast packets */
    __u32 pad;
};

#define XG_FWD_SEEN_NS ONE_SEC_NS    /* seen_ns granularity: one write per entry per second at most */

struct xg_fwd_counter {
    __u64 packets;
    __u64 bytes;
};

/* The fast path's maps are not pinned (BPF_F_TABLE, not XG_MAP): a program holds them, and an
 * upgrade starts them empty (the next sync fills them from conntrack) rather than leaving the old
 * ones pinned beside the new. (So a layout change needs no new name: no map is ever reused.) */

/* xg_fwd_lru: struct xg_fwd_key (the packet's 5-tuple) → struct xg_fwd (its translation). Written
 * by the controller only (from conntrack); the data path deletes a flow's two entries at its end. */
BPF_F_TABLE("lru_hash", struct xg_fwd_key, struct xg_fwd, xg_fwd_lru, XG_FWD_FLOWS_MAX, 0);

/* xg_fwd_pcpu: XG_FWD_CNT_* → per-CPU struct xg_fwd_counter. */
BPF_F_TABLE("percpu_array", int, struct xg_fwd_counter, xg_fwd_pcpu, XG_FWD_CNT_MAX, 0);

/* xg_fwd_rule: rule_id → per-CPU struct xg_fwd_counter: the fast packets of each forwarding rule
 * (nftables' per-rule counters never see them). The controller creates an entry per rule. */
BPF_F_TABLE("percpu_hash", __u32, struct xg_fwd_counter, xg_fwd_rule, XG_FWD_RULES_MAX, 0);

/* xg_fwd_prog: slot 0 → xdpguard_fwd_in (dataplane.compile_program puts it there). Empty, the
 * tail call fails and the packet passes: the slow path. */
BPF_PROG_ARRAY(xg_fwd_prog, 1);

static __always_inline void xg_fwd_count(__u32 slot, __u64 bytes)
{
    struct xg_fwd_counter *c = xg_fwd_pcpu.lookup(&slot);
    if (c) {
        c->packets += 1;
        c->bytes += bytes;
    }
}

static __always_inline __u16 xg_fwd_fold(__u32 c)
{
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    return (__u16)c;
}

/* RFC 1624 incremental update of a one's-complement checksum for a 32-bit word changed from
 * `from` to `to` (raw memory order on both sides: the sum does not depend on byte order). */
static __always_inline __u16 xg_csum_replace4(__u16 sum, __u32 from, __u32 to)
{
    __u32 c = (__u16)~sum;
    c += (__u16)~(from & 0xffff);
    c += (__u16)~(from >> 16);
    c += to & 0xffff;
    c += to >> 16;
    return ~xg_fwd_fold(c);
}

static __always_inline __u16 xg_csum_replace2(__u16 sum, __u16 from, __u16 to)
{
    __u32 c = (__u16)~sum;
    c += (__u16)~from;
    c += to;
    return ~xg_fwd_fold(c);
}

/* The IPv4 header checksum of a 20-byte header (options are never fast-pathed). */
static __always_inline __u16 xg_ip_csum(struct iphdr *iph)
{
    __u16 *w = (__u16 *)iph;
    __u32 c = 0;
    iph->check = 0;
#pragma unroll
    for (int i = 0; i < 10; i++)
        c += w[i];
    return ~xg_fwd_fold(c);
}

/* Forward one packet on the fast path if its flow has an entry: XDP_REDIRECT / XDP_TX when it was
 * rewritten and sent, XDP_PASS (packet unchanged) for the slow path. The main program reaches it
 * by a tail call (xg_fwd_prog → xdpguard_fwd_in), so the verifier walks it once, not once per
 * state the pipeline ends in (inlined after the verdict: +130K instructions; bcc 0.26 does not
 * relocate a BPF-to-BPF call, "jump out of range" at load). */
static __always_inline int step_fastfwd(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *iph = (void *)(eth + 1);
    if ((void *)(iph + 1) > data_end)
        return XDP_PASS;
    if (iph->ihl != 5 || iph->version != 4 || (iph->frag_off & bpf_htons(0x3FFF)) || iph->ttl <= 1)
        return XDP_PASS;
    struct xg_fwd_key k = { .saddr = iph->saddr, .daddr = iph->daddr, .proto = iph->protocol };
    __u16 *l4 = (void *)(iph + 1);
    __u16 *check;
    __u8 flags = 0;
    if (iph->protocol == IPPROTO_TCP) {
        struct tcphdr *th = (void *)l4;
        if ((void *)(th + 1) > data_end)
            return XDP_PASS;
        flags = ((__u8 *)th)[13];
    } else if (iph->protocol == IPPROTO_UDP) {
        struct udphdr *uh = (void *)l4;
        if ((void *)(uh + 1) > data_end)
            return XDP_PASS;
    } else {
        return XDP_PASS;
    }
    k.sport = l4[0];
    k.dport = l4[1];
    struct xg_fwd *f = xg_fwd_lru.lookup(&k);
    if (!f)
        return XDP_PASS;
    struct xg_fwd v = *f;
    __u64 len = data_end - data;
    if (flags & (XG_TCP_SYN | XG_TCP_FIN | XG_TCP_RST)) {
        /* The end (or a new start) of the connection: conntrack must see it and everything after. */
        struct xg_fwd_key rk = { .saddr = v.daddr, .daddr = v.saddr, .sport = v.dport, .dport = v.sport,
                                 .proto = k.proto };
        xg_fwd_lru.delete(&k);
        xg_fwd_lru.delete(&rk);
        xg_fwd_count(XG_FWD_CNT_END, len);
        return XDP_PASS;
    }

    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.tos = iph->tos;
    fib.l4_protocol = k.proto;
    fib.sport = v.sport;
    fib.dport = v.dport;
    fib.tot_len = bpf_ntohs(iph->tot_len);
    fib.ipv4_src = v.saddr;
    fib.ipv4_dst = v.daddr;
    fib.ifindex = ctx->ingress_ifindex;
    int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
        xg_fwd_count(XG_FWD_CNT_FIB, len);
        return XDP_PASS;
    }

    /* The packet pointers are valid again only after re-checking them (a helper was called). */
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    eth = data;
    iph = (void *)(eth + 1);
    if ((void *)(iph + 1) > data_end)
        return XDP_PASS;
    l4 = (void *)(iph + 1);
    if (k.proto == IPPROTO_TCP) {
        struct tcphdr *th = (void *)l4;
        if ((void *)(th + 1) > data_end)
            return XDP_PASS;
        check = &th->check;
    } else {
        struct udphdr *uh = (void *)l4;
        if ((void *)(uh + 1) > data_end)
            return XDP_PASS;
        check = &uh->check;
    }
    __u16 sum = *check;
    if (k.proto == IPPROTO_TCP || sum) {   /* a UDP checksum of 0 means none: it stays 0 */
        sum = xg_csum_replace4(sum, k.saddr, v.saddr);
        sum = xg_csum_replace4(sum, k.daddr, v.daddr);
        sum = xg_csum_replace2(sum, k.sport, v.sport);
        sum = xg_csum_replace2(sum, k.dport, v.dport);
        if (k.proto == IPPROTO_UDP && !sum)
            sum = 0xffff;
        *check = sum;
    }
    l4[0] = v.sport;
    l4[1] = v.dport;
    iph->saddr = v.saddr;
    iph->daddr = v.daddr;
    iph->ttl -= 1;
    iph->check = xg_ip_csum(iph);
    __builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
    xg_fwd_count(v.dir == XG_FWD_OUT ? XG_FWD_CNT_OUT : XG_FWD_CNT_IN, len);
    struct xg_fwd_counter *rule = xg_fwd_rule.lookup(&v.rule_id);
    if (rule) {
        rule->packets += 1;
        rule->bytes += len;
    }
    __u64 now = bpf_ktime_get_ns();
    if (now - v.seen_ns >= XG_FWD_SEEN_NS)
        f->seen_ns = now;            /* the flow is alive: conntrack's timeout is refreshed from it */
    if (fib.ifindex == ctx->ingress_ifindex)
        return XDP_TX;
    return bpf_redirect(fib.ifindex, 0);
}

#endif /* XG_FWD_FAST */

#endif /* XDPGUARD_STEP_FASTFWD_H */
