/* steps/ratelimit.h — per-source pps/bps and SYN-rate buckets behind a source sketch, and the
 * per-destination pps budget (verified sources first). */
#ifndef XDPGUARD_STEP_RATELIMIT_H
#define XDPGUARD_STEP_RATELIMIT_H

#include "common.h"
#include "maps.h"
#include "knowngood.h"
#include "ban.h"

/* Refill a nano-unit bucket at rate/s up to burst, charge `pre` (packets that already passed:
 * the source sketch's uncharged ones; down to 0 at most), then take cost; 1 when it had enough. */
static __always_inline int bucket_take(__u64 *tokens, __u64 *last_ns, __u64 now, __u64 rate, __u64 burst,
                                       __u64 pre, __u64 cost)
{
    __u64 cap = burst * XG_TOKEN;
    __u64 elapsed = now > *last_ns ? now - *last_ns : 0;  /* another CPU may have stamped a later now */
    if (elapsed > ONE_SEC_NS * 4)
        elapsed = ONE_SEC_NS * 4;          /* idle longer than 4 s refills at most 4 s worth */
    __u64 add = elapsed * rate;            /* rate <= 4e9/s (validated): no overflow */
    __u64 t = (*tokens >= cap || add >= cap - *tokens) ? cap : *tokens + add;  /* saturating: the sum may pass 2^64 */
    t = t > pre ? t - pre : 0;
    *last_ns = now;
    if (t < cost) {
        *tokens = t;
        return 0;
    }
    *tokens = t - cost;
    return 1;
}

/* The source sketch's K for one limit: min(burst / 2, rate per second, XG_SK_MAX); 2^62 ("no
 * limit") when the rate is 0. Uncharged counts within K over two windows of >= 1 s pass any
 * token bucket of that rate and burst: an interval of T s spans at most T/1 s + 2 windows, so it
 * holds at most K * (T + 2) <= burst + rate * T packets. In arithmetic only (every operand is
 * below 2^63, so a difference's top bit is the comparison): no branches, no verifier states. */
static __always_inline __u64 xg_sk_k(__u64 rate, __u64 burst)
{
    __u64 none = ((rate | -rate) >> 63) ^ 1;           /* 1 when rate == 0 */
    return xg_min(xg_min(burst >> 1, rate), XG_SK_MAX) | (none << 62);
}

/* The limits for this packet: a per-port override (the service record's, steps/port.h), else
 * the protected address's defaults. */
static __always_inline struct xg_limits *limits_for(struct xg_protected *prot, struct xg_pkt *p)
{
    if (p->svc_lim) {
        __u32 slot = p->svc - 1;
        struct xg_svc *s = xg_svc_arr.lookup(&slot);
        if (s)
            return &s->lim;
        /* Cannot happen (slot < XG_PORTS_MAX). The lookup keeps xg_portlim_hash, the
         * controller's record of the limits, among the program's maps: the controller finds
         * every map through them. */
        xg_portlim_hash.lookup(&p->dst);
    }
    return &prot->lim;
}

/* Step 11: per-source pps/bps buckets, per-destination pps; step 12a: per-source SYN rate.
 * XXX: buckets are updated without locks; concurrent CPUs may lose a refill or a take. */
static __always_inline __u32 step_ratelimit(struct xg_config *cfg, struct xg_protected *prot, struct xg_limits *lim,
                                            struct xg_pkt *p, int is_syn, __u64 *now)
{
#ifdef XG_SPEC_NO_LIMITS
    return XG_CONTINUE;
#endif
    int per_src = lim->src_pps || lim->src_bps || (is_syn && lim->syn_src_pps);
    if (lim->dst_pps && p->has_l4 && (p->l4proto == IPPROTO_TCP || p->l4proto == IPPROTO_UDP)) {
        /* A port with a service record (steps/port.h) has its bucket there (xg_svc_arr: no
         * lookup by key). Every other address:port has a bucket of its own in xg_dstbkt_hash
         * while the map has room; once it is full (a flood over random ports), ports without one
         * share their address's bucket in xg_dstaddr_arr, which always exists: a full map
         * neither lifts the limit nor drops a packet for want of a bucket, and never touches
         * another address. The controller deletes idle buckets (policy.sweep_dst_buckets), so
         * the map empties again. */
        struct xg_dst_bucket *db = 0;
        if (p->svc) {
            __u32 slot = p->svc - 1;
            struct xg_svc *s = xg_svc_arr.lookup(&slot);
            if (s) {
                db = &s->bkt;
                if (!db->last_ns) {        /* not used yet: like a new bucket */
                    db->last_ns = xg_now(now);
                    db->pkt_tokens = lim->dst_burst_pkts * XG_TOKEN;
                }
            }
        } else {
            db = xg_dstbkt_hash.lookup(&p->dst);
        }
        if (!db && !p->svc) {
            struct xg_dst_bucket fresh = { .last_ns = xg_now(now), .pkt_tokens = lim->dst_burst_pkts * XG_TOKEN };
            xg_dstbkt_hash.update(&p->dst, &fresh);
            db = xg_dstbkt_hash.lookup(&p->dst);
        }
        if (!db) {
            __u32 aslot = prot->syn.slot;
            db = xg_dstaddr_arr.lookup(&aslot);
        }
        if (db) {
            /* verified sources first (knowngood.h): an unverified one must leave `reserve` tokens
             * behind; a verified one is never dropped by this budget (it is meant for unknown traffic) */
            __u64 reserve = kg_reserve(lim, p, now);
            if (bucket_take(&db->pkt_tokens, &db->last_ns, xg_now(now), lim->dst_pps, lim->dst_burst_pkts, 0,
                            XG_TOKEN + reserve))
                db->pkt_tokens += reserve;
            else if (kg_verified(p))
                kg_vdrop(XG_FILTERS_MAX + XG_REASON_RATELIMIT, 0);
            else
                return reserve && db->pkt_tokens >= XG_TOKEN ? XG_REASON_UNKNOWN : XG_REASON_RATELIMIT;
        }
    }
    if (!per_src)
        return XG_CONTINUE;
    __u64 t = xg_now(now);
    /* The source sketch (abi.h xg_srcsk): a source whose slot's uncharged counts of this window
     * and the last stay within K of every limit passes without a bucket: no LRU operation. */
    __u64 un_p = 0, un_b = 0, un_s = 0;
    int hot = 1;
    __u32 slot = xg_src_hash(&p->src) & (XG_SK_SLOTS - 1);
    struct xg_srcsk *sk = xg_srcsk_arr.lookup(&slot);
    if (sk) {
        __u32 e = t >> XG_SK_SHIFT;
        __u32 c = e & 1;
        if (sk->epoch != e) {
            if (sk->epoch + 1 != e) {      /* the other parity is older than the previous window */
                sk->pkts[c ^ 1] = 0;
                sk->bytes[c ^ 1] = 0;
                sk->syns[c ^ 1] = 0;
            }
            sk->pkts[c] = 0;
            sk->bytes[c] = 0;
            sk->syns[c] = 0;
            sk->epoch = e;
        }
        un_p = (__u64)sk->pkts[0] + sk->pkts[1];
        un_b = (__u64)sk->bytes[0] + sk->bytes[1];
        un_s = (__u64)sk->syns[0] + sk->syns[1];
        hot = sk->hot_until >= e;
        __u64 over = xg_over(un_p + 1, xg_sk_k(lim->src_pps, lim->src_burst_pkts)) |
                     xg_over(un_b + p->len, xg_sk_k(lim->src_bps, lim->src_burst_bytes)) |
                     (xg_over(un_s + 1, xg_sk_k(lim->syn_src_pps, lim->syn_src_burst)) & is_syn);
        if (!hot && !over) {
            /* XXX: unlocked, like the buckets: concurrent CPUs may lose a count */
            sk->pkts[c] += 1;
            sk->bytes[c] += p->len;
            sk->syns[c] += is_syn;
            return XG_CONTINUE;
        }
        sk->hot_until = e + 1;         /* hot through the next window */
    }
    /* The bucket path: one LRU operation per packet, a lookup, or for a new source an insert of
     * a bucket already charged for this packet (no lookup again after the insert). A bucket
     * created, or found by a source whose slot was not hot, is first charged with the slot's
     * uncharged counts (its own and its slot mates': never less than its own). */
    struct xg_bucket *stored = xg_bucket_lru.lookup(&p->src);
    struct xg_bucket cur;
    if (stored) {
        cur = *stored;
        if (hot)
            un_p = un_b = un_s = 0;        /* on the bucket path already: charged packet by packet */
    } else {
        cur.last_ns = cur.syn_last_ns = t;
        cur.pkt_tokens = lim->src_burst_pkts * XG_TOKEN;
        cur.byte_tokens = lim->src_burst_bytes * XG_TOKEN;
        cur.syn_tokens = lim->syn_src_burst * XG_TOKEN;
    }
    struct xg_bucket *b = &cur;           /* worked on in place on the stack, written back once */
    __u64 byte_last = b->last_ns;          /* both buckets refill from the one shared last_ns */
    __u32 reason = XG_CONTINUE;
    if (lim->src_pps && !bucket_take(&b->pkt_tokens, &b->last_ns, t, lim->src_pps, lim->src_burst_pkts,
                                     un_p * XG_TOKEN, XG_TOKEN))
        reason = XG_REASON_RATELIMIT;
    if (lim->src_bps && !bucket_take(&b->byte_tokens, &byte_last, t, lim->src_bps, lim->src_burst_bytes,
                                     un_b * XG_TOKEN, reason == XG_CONTINUE ? (__u64)p->len * XG_TOKEN : 0))
        reason = XG_REASON_RATELIMIT;      /* (cost 0 after a packet-bucket drop: refill only) */
    b->last_ns = t;
    if (lim->syn_src_pps && ((reason == XG_CONTINUE && is_syn) || un_s) &&
        !bucket_take(&b->syn_tokens, &b->syn_last_ns, t, lim->syn_src_pps, lim->syn_src_burst, un_s * XG_TOKEN,
                     reason == XG_CONTINUE && is_syn ? XG_TOKEN : 0))
        reason = XG_REASON_SYN;
    if (stored)
        *stored = cur;
    else
        xg_bucket_lru.update(&p->src, &cur);
    if (reason != XG_CONTINUE && lim->ban_s) {
        /* Only a packet of an established connection is evidence a spoofer cannot make: any
         * other ban from these counts is short (xg_verify_config.spoof_ban_s). */
        __u32 ban_s = lim->ban_s;
        if (!p->est) {
            struct xg_verify_config *vc = xg_vcfg();
            __u32 cap = vc && vc->spoof_ban_s ? vc->spoof_ban_s : XG_SPOOF_BAN_S;
            if (ban_s > cap)
                ban_s = cap;
        }
        xg_ban_source(cfg, p, ban_s, reason, now);
    }
    return reason;
}

#endif /* XDPGUARD_STEP_RATELIMIT_H */
