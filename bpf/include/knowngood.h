/* knowngood.h — known-good sources: learned on tc egress, consulted by the SYN defence.
 *
 * A client is known-good once the protected side has had a two-way exchange with it: a TCP
 * segment without SYN or RST and with ACK leaving a protected address:port towards it (the
 * connection is established — with SYN cookies, synproxy's window update), or any UDP datagram
 * leaving a protected address towards it (the service answered). Only egress writes
 * xg_goodsrc_hash, a plain hash: spoofed ingress can neither add nor evict. A known-good source
 * skips the SYN defence (no cookie: its connections keep window scaling, SACK, timestamps).
 *
 * XXX: UDP learning trusts the service: a UDP service that answers a spoofed request makes the
 *      spoofed address known-good (a reflection-style trick); TCP learning cannot be spoofed.
 * XXX: expired entries are deleted when XDP meets them; a full map stops learning until then.
 */
#ifndef XDPGUARD_KNOWNGOOD_H
#define XDPGUARD_KNOWNGOOD_H

#define XG_GOOD_REFRESH_NS (60ULL * 1000000000ULL)   /* egress rewrites an entry at most once a minute */

/* Egress: learn the client (family, address as in a flow key). */
static __always_inline void kg_learn(__u8 family, __u8 *client)
{
    struct xg_src_key k = {};
    __builtin_memcpy(k.addr, client, 16);
    k.family = family;
    __u64 t = bpf_ktime_get_ns();
    __u64 exp = t + (__u64)XG_GOOD_TTL_S * 1000000000ULL;
    struct xg_goodsrc *g = xg_goodsrc_hash.lookup(&k);
    if (g) {
        if (g->expires_ns + XG_GOOD_REFRESH_NS < exp)
            g->expires_ns = exp;
        return;
    }
    struct xg_goodsrc fresh = { .expires_ns = exp };
    xg_goodsrc_hash.update(&k, &fresh);
}

/* XDP: is the source known-good now? (An expired entry is deleted.) */
static __always_inline int kg_known(struct xg_src_key *src, __u64 t)
{
    struct xg_goodsrc *g = xg_goodsrc_hash.lookup(src);
    if (!g)
        return 0;
    if (g->expires_ns > t)
        return 1;
    xg_goodsrc_hash.delete(src);
    return 0;
}

/* The dst-bucket tokens (nano-units) a source that is not known-good must leave in the bucket:
 * with unknown_share_pct s, unknown sources take tokens only while more than (100 - s) % of the
 * burst remains, so known-good sources are admitted first. 0 for known-good sources and when off. */
static __always_inline __u64 kg_reserve(struct xg_limits *lim, struct xg_pkt *p, __u64 *now)
{
    __u32 share = lim->unknown_share_pct;
    if (!share || share >= 100 || kg_known(&p->src, xg_now(now)))
        return 0;
    return lim->dst_burst_pkts * (XG_TOKEN / 100) * (100 - share);
}

#endif /* XDPGUARD_KNOWNGOOD_H */
