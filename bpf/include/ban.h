/* ban.h — the data path's bans of a source: the ban bloom bit and the writer (xg_ban_source),
 * used by the steps whose evidence bans (feature filters, rate limits); steps/banned.h reads them.
 */
#ifndef XDPGUARD_BAN_H
#define XDPGUARD_BAN_H

#include "common.h"
#include "maps.h"
#include "knowngood.h"

static __always_inline struct xg_dpstate *xg_dpstate(void)
{
    __u32 zero = 0;
    return xg_dpstate_arr.lookup(&zero);
}

/* The bit of a source in xg_banbloom_arr. */
static __always_inline __u32 xg_ban_bit(struct xg_src_key *k)
{
    return xg_src_hash(k) & (XG_BANBLOOM_BITS - 1);
}

/* Ban a source for ban_s seconds because of `reason` — unless that reason is monitored (monitor
 * mode has no side effects, so a would-drop never bans: a ban would then really drop), or the
 * source is verified (knowngood.h: the evidence of a data-path ban is packets anyone can send
 * with its address; the verified source's own packets are still dropped by the limit). */
static __always_inline void xg_ban_source(struct xg_config *cfg, struct xg_pkt *p, __u32 ban_s, __u32 reason,
                                          __u64 *now)
{
    struct xg_src_key *src = &p->src;
    if (cfg->monitor_mask & (1ULL << (reason & 63)))
        return;
    if (kg_verified(p))
        return;
    struct xg_ban b = {};
    b.expires_ns = xg_now(now) + (__u64)ban_s * ONE_SEC_NS;
    b.reason = reason;
    __u32 bit = xg_ban_bit(src);
    __u32 word = bit >> 6;
    __u64 *w = xg_banbloom_arr.lookup(&word);
    if (w && !(*w & (1ULL << (bit & 63))))
        __sync_fetch_and_or(w, 1ULL << (bit & 63));  /* before the ban: a set bit never hides one */
    xg_ban_lru.update(src, &b);
    struct xg_dpstate *st = xg_dpstate();
    if (st && !(st->flags & XG_DP_HAS_BANS))
        __sync_fetch_and_or(&st->flags, XG_DP_HAS_BANS);
}

#endif /* XDPGUARD_BAN_H */
