/* knowngood.h — verified clients: learned on tc egress from what the protected side sends,
 * consulted (never written, but for their privilege bucket) by XDP.
 *
 * A source is verified once it proved it owns its address (DESIGN.md "Prove the client"):
 *  - TCP (XG_VF_TCP): a segment with ACK and without SYN or RST leaves a protected address
 *    towards it. The kernel sends one only on an established connection, i.e. after the client
 *    completed a handshake (or a cookie ACK through us: synproxy's window update). A spoofed
 *    SYN only draws a SYN-ACK (not learned), a spoofed ACK of no connection a RST (not learned).
 *    Proves the address for every protocol.
 *  - UDP (XG_VF_UDP): a UDP datagram leaves a protected address towards it (the service
 *    answered) in peacetime only: while no CPU sees more than udp_peace_pps UDP packets a
 *    second to the address (xg_udpwin_pcpu, counted in XDP; once over, xg_udpflood_arr: no
 *    learning for XG_UDP_PEACE_HOLD_S) and the controller has not switched UDP learning off
 *    (XG_VC_NO_UDP_LEARN). A spoofed flood therefore cannot insert or refresh an entry: during
 *    a flood the answers it draws teach nothing. Proves the address for UDP only, and expires
 *    sooner (XG_GOOD_UDP_TTL_S).
 *    XXX: a low-rate spoofer in peacetime (below udp_peace_pps) can still make a UDP service
 *    answer an address it does not own; that address then gets the UDP privilege, within its
 *    per-source budget, and the controller's sweep evicts UDP-only entries first.
 *
 * Only egress inserts or refreshes xg_goodsrc_hash (a plain hash: no LRU eviction, and no ref
 * bit that an XDP lookup would set), and sets the source's bit in xg_vbloom_arr first: XDP
 * looks a source up only when its bit is set, so a flood from random sources costs one array
 * read per packet, not a hash lookup. XDP never inserts, refreshes or deletes an entry, so
 * spoofed ingress can neither add, keep alive nor evict one. The controller sweeps the map
 * (policy.sweep_verified): expired entries go, and past a high-water mark the UDP-only ones,
 * then the oldest, so learning always finds room again. A full map only pauses learning.
 *
 * The privilege of a verified source (the steps: it passes the automatic mitigation filters,
 * every budget meant for unknown traffic, the SYN defence, and the data path bans it for
 * nothing; the operator's lists and bans, its own per-source limits still apply) is bounded by a token bucket in its entry, tcp_pps/udp_pps of xg_vcfg_arr: past what a
 * real client sends — e.g. a flood spoofing a verified address — its packets are judged as
 * anyone's. The bucket is the only field XDP writes.
 */
#ifndef XDPGUARD_KNOWNGOOD_H
#define XDPGUARD_KNOWNGOOD_H

#include "common.h"
#include "maps.h"

#define XG_GOOD_REFRESH_NS (60ULL * 1000000000ULL)   /* egress rewrites an entry at most once a minute */

static __always_inline struct xg_verify_config *xg_vcfg(void)
{
    __u32 zero = 0;
    return xg_vcfg_arr.lookup(&zero);
}

/* Is it peacetime for UDP at this protected address (its slot in xg_udpflood_arr), at t? */
static __always_inline int kg_udp_peace(struct xg_protected *prot, __u64 t)
{
    struct xg_verify_config *vc = xg_vcfg();
    if (vc && (vc->flags & XG_VC_NO_UDP_LEARN))
        return 0;
    __u32 slot = prot->syn.slot;
    __u64 *until = xg_udpflood_arr.lookup(&slot);
    return !until || t >= *until;
}

/* XDP: count a UDP packet to a protected address on this CPU; past udp_peace_pps in a second
 * the address is under a UDP flood for XG_UDP_PEACE_HOLD_S (no UDP learning). The shared
 * xg_udpflood_arr is written at most once a second per CPU (defend_until_ns: the next time). */
static __always_inline void kg_udp_count(struct xg_protected *prot, __u64 t)
{
    __u32 slot = prot->syn.slot;
    struct xg_synwin *w = xg_udpwin_pcpu.lookup(&slot);
    if (!w)
        return;
    if (t - w->window_start_ns >= ONE_SEC_NS) {
        w->window_start_ns = t;
        w->count = 0;
    }
    w->count += 1;
    struct xg_verify_config *vc = xg_vcfg();
    __u64 peace = vc && vc->udp_peace_pps ? vc->udp_peace_pps : XG_UDP_PEACE_PPS;
    if (w->count > peace && t >= w->defend_until_ns) {
        w->defend_until_ns = t + ONE_SEC_NS;
        __u64 *until = xg_udpflood_arr.lookup(&slot);
        if (until)
            *until = t + XG_UDP_PEACE_HOLD_S * ONE_SEC_NS;
    }
}

/* The word of xg_vbloom_arr holding the source's bit, and the bit (policy.good_bloom_bit). */
static __always_inline __u64 *kg_bloom_word(struct xg_src_key *k, __u64 *bit)
{
    __u32 b = xg_src_hash(k) & (XG_GOODBLOOM_BITS - 1);
    __u32 word = b >> 6;
    *bit = 1ULL << (b & 63);
    return xg_vbloom_arr.lookup(&word);
}

/* Egress: learn (or refresh) the client (family, address as in a flow key) as verified by
 * `kind`. UDP only in peacetime at the protected address that answered. */
static __always_inline void kg_learn(struct xg_protected *prot, __u32 kind, __u8 family, __u8 *client)
{
    __u64 t = bpf_ktime_get_ns();
    if (kind == XG_VF_UDP && !kg_udp_peace(prot, t))
        return;
    struct xg_src_key k = {};
    __builtin_memcpy(k.addr, client, 16);
    k.family = family;
    __u64 exp = t + (__u64)(kind == XG_VF_TCP ? XG_GOOD_TTL_S : XG_GOOD_UDP_TTL_S) * ONE_SEC_NS;
    __u64 bit;
    __u64 *w = kg_bloom_word(&k, &bit);
    if (w && !(*w & bit))
        __sync_fetch_and_or(w, bit);   /* before the entry: a clear bit never hides one */
    struct xg_goodsrc *g = xg_goodsrc_hash.lookup(&k);
    if (g) {
        if ((g->kind & kind) != kind)
            g->kind |= kind;           /* (only egress writes kind; racing CPUs both set bits) */
        if (g->expires_ns + XG_GOOD_REFRESH_NS < exp)
            g->expires_ns = exp;
        return;
    }
    struct xg_verify_config *vc = xg_vcfg();
    __u64 burst = kind == XG_VF_TCP ? (vc && vc->tcp_burst ? vc->tcp_burst : XG_VERIFIED_TCP_BURST)
                                    : (vc && vc->udp_burst ? vc->udp_burst : XG_VERIFIED_UDP_BURST);
    struct xg_goodsrc fresh = { .expires_ns = exp, .kind = kind, .last_ns = t, .tokens = burst * XG_TOKEN };
    xg_goodsrc_hash.update(&k, &fresh);   /* fails when full: the controller's sweep makes room */
}

/* The verdict of one entry at t, and its privilege bucket charged one packet when it holds.
 * Arithmetic only, like xg_sk_k (steps/ratelimit.h): the verifier walks it as one path. */
static __always_inline __u64 kg_check(struct xg_goodsrc *g, struct xg_verify_config *vc, __u64 udp, __u64 t)
{
    __u64 kind = g->kind;
    __u64 tcp = kind & XG_VF_TCP;
    __u64 ok = xg_over(g->expires_ns, t) & (tcp | ((kind >> 1) & udp));
    __u64 rate = xg_or_default(vc->udp_pps, XG_VERIFIED_UDP_PPS);
    __u64 burst = xg_or_default(vc->udp_burst, XG_VERIFIED_UDP_BURST);
    rate += (xg_or_default(vc->tcp_pps, XG_VERIFIED_TCP_PPS) - rate) * tcp;
    burst += (xg_or_default(vc->tcp_burst, XG_VERIFIED_TCP_BURST) - burst) * tcp;
    __u64 cap = xg_min(burst, 1ULL << 32) * XG_TOKEN;
    __u64 d = t - g->last_ns;
    d &= (d >> 63) - 1;                              /* another CPU stamped a later t: 0 */
    __u64 add = xg_min(xg_min(d, ONE_SEC_NS * 4) * xg_min(rate, 1ULL << 31), cap);
    __u64 tokens = xg_min(xg_min(g->tokens, cap) + add, cap);
    ok &= xg_over(tokens + 1, XG_TOKEN);             /* at least one packet left */
    g->tokens = tokens - XG_TOKEN * ok;
    g->last_ns = t;
    return ok;
}

/* XDP: is the source verified for this packet now, and within what a real client sends?
 * Sets p->vstate (1: no, 2: yes); read through kg_verified. Looked up once per packet, at one
 * place (policy_steps in xdpguard.bpf.c; step_banned again when a ban holds the source): a lookup made lazily at
 * each step that asks would fork the verifier's states at every one of them. A TCP
 * verification covers every protocol, a UDP one UDP only; an entry of an older program (kind 0)
 * is not trusted. Takes one token of the privilege bucket (XDP's only write to the map). */
static __always_inline void kg_lookup(struct xg_pkt *p, __u64 *now)
{
    __u64 v = 0;
    __u64 t = xg_now(now);
    __u64 bit;
    __u64 *w = kg_bloom_word(&p->src, &bit);
    struct xg_goodsrc *g = w && (*w & bit) ? xg_goodsrc_hash.lookup(&p->src) : 0;
    struct xg_verify_config *vc = xg_vcfg();
    if (g && vc)
        v = kg_check(g, vc, xg_eq(p->l4proto, IPPROTO_UDP), t);
    p->vstate = v + 1;
}

/* 1 when kg_lookup found the source verified for this packet (0 before any lookup). */
static __always_inline __u64 kg_verified(struct xg_pkt *p)
{
    return p->vstate >> 1;
}


/* The do-no-harm counter slot: a filter's (0..XG_FILTERS_MAX-1) or a reason's. */
static __always_inline void kg_vdrop(__u32 slot, int dropped)
{
    struct xg_vdrop *v = xg_vdrop_pcpu.lookup(&slot);
    if (!v)
        return;
    if (dropped)
        v->dropped += 1;
    else
        v->exempted += 1;
}

/* The dst-bucket tokens (nano-units) an unverified source must leave in the bucket: with
 * unknown_share_pct s, unverified sources take tokens only while more than (100 - s) % of the
 * burst remains, so verified sources are admitted first. 0 for verified sources and when off. */
static __always_inline __u64 kg_reserve(struct xg_limits *lim, struct xg_pkt *p, __u64 *now)
{
    __u32 share = lim->unknown_share_pct;
    if (!share || share >= 100 || kg_verified(p))
        return 0;
    return lim->dst_burst_pkts * (XG_TOKEN / 100) * (100 - share);
}

#endif /* XDPGUARD_KNOWNGOOD_H */
