/* steps/banned.h — dynamic bans (the operator's, then the data path's) drop their source. */
#ifndef XDPGUARD_STEP_BANNED_H
#define XDPGUARD_STEP_BANNED_H

#include "common.h"
#include "maps.h"
#include "knowngood.h"
#include "ban.h"

/* Step 5: dynamic bans: the operator's (never evicted), then the data path's (LRU). */
static __always_inline __u32 step_banned(struct xg_pkt *p, __u64 *now)
{
#ifdef XG_SPEC_NO_BANS
    return XG_CONTINUE;
#endif
    struct xg_dpstate *st = xg_dpstate();
    if (!st || !(st->flags & XG_DP_HAS_BANS))
        return XG_CONTINUE;
    /* A clear bloom bit: no ban of this source in either map. (No early return: one exit shape
     * keeps the verifier's states after this step from doubling.) */
    __u64 look = 1;
    if (st->flags & XG_DP_BAN_BLOOM) {
        __u32 bit = xg_ban_bit(&p->src);
        __u32 word = bit >> 6;
        __u64 *w = xg_banbloom_arr.lookup(&word);
        if (w)
            look = (*w >> (bit & 63)) & 1;
    }
    /* The operator's bans are looked at unless the controller found their map empty (sweep_bans
     * sets the flag, `ban add` clears it after writing a ban); without the flag: look. */
    struct xg_ban *ob = (!look || (st->flags & XG_DP_OPBANS_EMPTY)) ? 0 : xg_opban_hash.lookup(&p->src);
    if (ob) {
        if (ob->expires_ns > xg_now(now)) {
            __sync_fetch_and_add(&ob->hits, 1);
            kg_lookup(p, now);
            if (kg_verified(p)) {     /* the ban holds; counted (do no harm) */
                ob->verified_hits += 1;
                kg_vdrop(XG_FILTERS_MAX + XG_REASON_BANNED, 1);
            }
            return XG_REASON_BANNED;
        }
        xg_opban_hash.delete(&p->src);
    }
    struct xg_ban *b = look ? xg_ban_lru.lookup(&p->src) : 0;
    if (!b)
        return XG_CONTINUE;
    if (b->expires_ns > xg_now(now)) {
        /* The data path bans no verified source (xg_ban_source): this one was banned while its
         * privilege was spent or before it proved itself. Counted (do no harm), not lifted. */
        __sync_fetch_and_add(&b->hits, 1);
        kg_lookup(p, now);
        if (kg_verified(p)) {
            b->verified_hits += 1;
            kg_vdrop(XG_FILTERS_MAX + XG_REASON_BANNED, 1);
        }
        return XG_REASON_BANNED;
    }
    xg_ban_lru.delete(&p->src);
    return XG_CONTINUE;
}

#endif /* XDPGUARD_STEP_BANNED_H */
