/* steps/synauth.h — the SYN defence above an address's SYN threshold: a cookie SYN-ACK
 * (steps/syncookie.h) or source authentication by retransmission. */
#ifndef XDPGUARD_STEP_SYNAUTH_H
#define XDPGUARD_STEP_SYNAUTH_H

#include "common.h"
#include "maps.h"
#include "knowngood.h"
#include "steps/syncookie.h"
#include "steps/budget.h"

/* Once an address went over its SYN threshold the defence stays up this long after the last
 * excess SYN, instead of letting the first threshold SYNs of each new second through. */
#define XG_SYN_HOLD_NS ONE_SEC_NS

/* Step 12b: SYN defence, above the address's SYN threshold (or always, XG_PROT_SYN_ALWAYS):
 * cookie mode answers the SYN with a SYN cookie (steps/syncookie.h); retransmit mode makes sources
 * authenticate by retransmitting. */
static __always_inline __u32 step_synauth(struct xg_config *cfg, struct xg_protected *prot, struct xg_pkt *p,
                                           __u64 *now)
{
    struct xg_syn_policy *sp = &prot->syn;
    int always = (prot->flags & XG_PROT_SYN_ALWAYS) != 0;
    if (!sp->syn_threshold_pps && !always)
        return XG_CONTINUE;
    __u64 t = xg_now(now);
    int over_budget = 0;
    if (!always) {
        __u32 slot = sp->slot;
        struct xg_synwin *w = xg_synwin_arr.lookup(&slot);
        if (!w)
            return XG_CONTINUE;
        if (t - w->window_start_ns >= ONE_SEC_NS) {
            /* A new second. XXX: racy reset across CPUs; the count is an estimate. */
            w->window_start_ns = t;
            w->count = 0;
        }
        __u64 seen = __sync_fetch_and_add(&w->count, 1) + 1;
        if (seen > sp->syn_threshold_pps)
            w->defend_until_ns = t + XG_SYN_HOLD_NS;   /* held one second past the last excess SYN */
        else if (t >= w->defend_until_ns && budget_syn_admit(prot, p, now))
            return XG_CONTINUE;    /* below the threshold, within the service's budget (budget.h) */
        over_budget = seen > sp->syn_threshold_pps + XG_SC_BUDGET_PPS;
    }
    if (kg_verified(p))
        return XG_CONTINUE;            /* verified (knowngood.h): no cookie, no retransmission */
    if ((prot->flags & XG_PROT_SYN_COOKIE) && xg_cookie_family(p))
        return over_budget ? XG_REASON_SYN : syncookie_answer(cfg);  /* past the cookie budget: drop */

    /* Retransmit mode proves no address: a flood that sends every SYN twice passes it. It makes
     * a flood pay double, and one authentication admits at most XG_SYNAUTH_SYNS SYNs (the
     * kernel then proves the address: a completed handshake makes the source verified). */
    struct xg_synauth *a = xg_synauth_lru.lookup(&p->src);
    if (a) {
        if (a->until_ns > t && a->syns_left) {
            a->syns_left -= 1;         /* XXX: unlocked: racing CPUs may admit one more */
            return XG_CONTINUE;
        }
        xg_synauth_lru.delete(&p->src);
    }
    struct xg_synseen *s = xg_synseen_lru.lookup(&p->src);
    if (s) {
        __u64 age = t - s->first_ns;
        int same = s->seq == p->tcp_seq && s->sport == p->sport;
        if (!same) {
            /* Another attempt: it replaces the remembered one only once that one is stale. */
            if (age > (__u64)sp->auth_max_ms * 1000000ULL) {
                s->first_ns = t;
                s->seq = p->tcp_seq;
                s->sport = p->sport;
            }
            return XG_REASON_SYN;
        }
        if (age >= (__u64)sp->auth_min_ms * 1000000ULL && age <= (__u64)sp->auth_max_ms * 1000000ULL) {
            struct xg_synauth ok = { .until_ns = t + (__u64)sp->auth_keep_s * ONE_SEC_NS,
                                     .syns_left = XG_SYNAUTH_SYNS - 1 };  /* this SYN is the first */
            xg_synauth_lru.update(&p->src, &ok);
            xg_synseen_lru.delete(&p->src);
            return XG_CONTINUE;
        }
        if (age > (__u64)sp->auth_max_ms * 1000000ULL)
            s->first_ns = t;   /* too late: this SYN starts a new attempt */
        return XG_REASON_SYN;
    }
    struct xg_synseen first = { .first_ns = t, .seq = p->tcp_seq, .sport = p->sport };
    xg_synseen_lru.update(&p->src, &first);
    return XG_REASON_SYN;
}

#endif /* XDPGUARD_STEP_SYNAUTH_H */
