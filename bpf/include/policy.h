/* policy.h — the cleansing steps after the lists: bans, fragments, malformed, protocol, port,
 * reflection, TCP state (tcpstate.h), feature filters, rate limits, SYN defence (DESIGN.md
 * pipeline, steps 5–12).
 *
 * Both address families fill one struct xg_pkt and share these steps. Each step returns
 * XG_CONTINUE or a verdict (reason, with *action set). A step whose policy is empty costs
 * a flag test, not a map lookup.
 */
#ifndef XDPGUARD_POLICY_H
#define XDPGUARD_POLICY_H

#define XG_CONTINUE 0xffffffff
#define ONE_SEC_NS 1000000000ULL
#define XG_TOKEN 1000000000ULL     /* one packet (or byte) in bucket nano-units */

#define XG_TCP_FIN 0x01
#define XG_TCP_SYN 0x02
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
    __u8 est;                  /* admitted by an established connection (tcpstate.h): not spoofable */
    __u8 filter_idx;           /* 1 + the index of the filter that dropped it (do-no-harm counters) */
};

static __always_inline __u64 xg_now(__u64 *now)
{
    if (!*now)
        *now = bpf_ktime_get_ns();
    return *now;
}

static __always_inline struct xg_dpstate *xg_dpstate(void)
{
    __u32 zero = 0;
    return xg_dpstate_arr.lookup(&zero);
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

/* The bit of a source in xg_banbloom_arr. */
static __always_inline __u32 xg_ban_bit(struct xg_src_key *k)
{
    return xg_src_hash(k) & (XG_BANBLOOM_BITS - 1);
}

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

/* min(a, b) for a, b below 2^63, in arithmetic only. */
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

#include "knowngood.h"

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

/* Step 7: protocol blocking. */
static __always_inline __u32 step_protocol(struct xg_protected *prot, struct xg_pkt *p)
{
    __u64 bit;
    switch (p->l4proto) {
    case IPPROTO_TCP:
        bit = XG_PROT_BLOCK_TCP;
        break;
    case IPPROTO_UDP:
        bit = XG_PROT_BLOCK_UDP;
        break;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
        bit = XG_PROT_BLOCK_ICMP;
        break;
    default:
        bit = XG_PROT_BLOCK_OTHER;
    }
    return (prot->flags & bit) ? XG_REASON_PROTOCOL : XG_CONTINUE;
}

/* Step 8: port policy (only with an L4 header: non-first fragments carry no ports). */
static __always_inline __u32 step_port(struct xg_protected *prot, struct xg_pkt *p)
{
    if (!(prot->flags & XG_PROT_PORT_POLICY) || !p->has_l4)
        return XG_CONTINUE;
    if (p->l4proto != IPPROTO_TCP && p->l4proto != IPPROTO_UDP)
        return XG_CONTINUE;
    return xg_ports_hash.lookup(&p->dst) ? XG_CONTINUE : XG_REASON_PORT;
}

/* Step 9: UDP reflection source ports. */
static __always_inline __u32 step_reflection(struct xg_config *cfg, struct xg_pkt *p)
{
    if (!(cfg->flags & XG_CFG_REFLECTION) || !p->has_l4 || p->l4proto != IPPROTO_UDP)
        return XG_CONTINUE;
    __u32 port = p->sport;
    __u8 *on = xg_reflect_arr.lookup(&port);
    return (on && *on) ? XG_REASON_REFLECTION : XG_CONTINUE;
}

/* Does filter f's payload condition hold? Bytes past the packet end never match. The bytes
 * are copied to the stack (bpf_xdp_load_bytes) and compared as two masked words: no per-byte
 * branches, so 64 filters stay cheap for the verifier. The controller zeroes mask bytes past
 * payload_len. */
static __always_inline int filter_payload(struct xdp_md *ctx, struct xg_filter *f, struct xg_pkt *p)
{
    if (!f->payload_len)
        return 1;
    __u32 base = f->payload_base == XG_FB_L3 ? p->l3_off : f->payload_base == XG_FB_L4 ? p->l4_off : p->payload_off;
    if (!base)
        return 0;
    __u32 off = base + f->payload_off;
    if (off > 0xffff || f->payload_len > XG_PAYLOAD_MATCH_MAX)
        return 0;
    /* bpf_xdp_load_bytes takes a length the verifier must prove non-zero. Older verifiers
     * (Debian 12's 6.1) learn nothing from the `!payload_len` test above and reject the call
     * with "invalid zero-sized read", so the length goes through a volatile slot (clang would
     * fold a plain re-check away) and comes back as ((len - 1) & 15) + 1: 1..16 for every
     * kernel, equal to payload_len for the 1..16 the controller writes. */
    volatile __u32 len_m1 = f->payload_len - 1;
    __u32 len = (len_m1 & (XG_PAYLOAD_MATCH_MAX - 1)) + 1;
    __u64 w[2] = {};
    void *data = (void *)(long)ctx->data;
    void *at = data + (off & 0x7ff);
    void *end = (void *)(long)ctx->data_end;
    if (off <= 0x7ff && at + XG_PAYLOAD_MATCH_MAX <= end)
        __builtin_memcpy(w, at, XG_PAYLOAD_MATCH_MAX);  /* direct read (bytes past len are masked off) */
    else if (bpf_xdp_load_bytes(ctx, off, w, len) != 0)  /* near the end: exactly len bytes, or none */
        return 0;
    __u64 *m = (__u64 *)f->payload_mask;
    __u64 *v = (__u64 *)f->payload;
    return (w[0] & m[0]) == v[0] && (w[1] & m[1]) == v[1];
}

/* The word of field `field` for value v in generation base (0 when out of range). */
static __always_inline __u64 xg_fvec(__u32 base, __u32 field, __u32 v)
{
    __u32 idx = base + field + v;
    __u64 *w = xg_fvec_arr.lookup(&idx);
    return w ? *w : 0;
}

/* Index of the one set bit of lsb: popcount(lsb - 1), in arithmetic only (no branches, so no
 * verifier states of its own). */
static __always_inline __u32 xg_bit_index(__u64 lsb)
{
    __u64 x = lsb - 1;
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (__u32)((x * 0x0101010101010101ULL) >> 56) & (XG_FILTERS_MAX - 1);
}

/* What a matching filter (index idx of the table) does. A new action is a case here (and a name
 * in policy.ACTIONS). A verified source passes an automatic mitigation filter (they come after
 * the operator's filters, so nothing of the operator's is skipped with it), counted as exempted. */
static __always_inline __u32 filter_verdict(struct xg_config *cfg, struct xg_filter *f, __u32 idx, struct xg_pkt *p,
                                            int *skip_rest, __u64 *now)
{
    p->filter_idx = idx + 1;
    switch (f->action) {
    case XG_FA_PASS:
        *skip_rest = 1;
        return XG_CONTINUE;
    case XG_FA_DROP_BAN:
        if (f->ban_s)
            xg_ban_source(cfg, p, f->ban_s, XG_REASON_FEATURE, now);
        return XG_REASON_FEATURE;
    case XG_FA_MITIGATE:
        if (kg_verified(p)) {
            kg_vdrop(idx, 0);
            p->filter_idx = 0;
            return XG_CONTINUE;
        }
        return XG_REASON_MITIGATION;
    default:
        return XG_REASON_FEATURE;
    }
}

/* Step 10: packet feature filters, first match wins. *skip_rest is set by a pass filter.
 * The header fields are classified by ANDing one word per field (abi.h XG_FV_*): the survivors
 * are the filters whose every header condition holds. Survivors without a payload condition
 * match outright; the payload filters among the survivors before the first of those are
 * compared in order. */
static __always_inline __u32 step_feature(struct xdp_md *ctx, struct xg_config *cfg, struct xg_pkt *p,
                                          int *skip_rest, __u64 *now)
{
#ifdef XG_SPEC_NO_FILTERS
    return XG_CONTINUE;
#endif
    if (!cfg->filters_count)
        return XG_CONTINUE;
    __u32 zero = 0;
    struct xg_fsel *sel = xg_fsel_arr.lookup(&zero);
    if (!sel)
        return XG_CONTINUE;
    __u32 gen = sel->gen & 1;
    struct xg_fhead *h = xg_fhead_arr.lookup(&gen);
    if (!h) {
        /* Cannot happen (gen < XG_FGENS). The lookup keeps xg_filters_arr, the controller's record
         * of the list, among the program's maps: the controller finds every map through them. */
        xg_filters_arr.lookup(&zero);
        return XG_CONTINUE;
    }
    __u32 base = gen * XG_FV_SLOTS;
    int ports = p->has_l4 && (p->l4proto == IPPROTO_TCP || p->l4proto == IPPROTO_UDP);
    int tcp = p->has_l4 && p->l4proto == IPPROTO_TCP;
    __u64 m = h->live & xg_fvec(base, XG_FV_PROTO, p->l4proto);
    if (m)
        m &= xg_fvec(base, XG_FV_DPORT, ports ? p->dport : XG_FV_NOPORT);
    if (m)
        m &= xg_fvec(base, XG_FV_SPORT, ports ? p->sport : XG_FV_NOPORT);
    if (m)
        m &= xg_fvec(base, XG_FV_LEN, p->len > 65535 ? XG_FV_NOPORT : p->len);
    if (m)
        m &= xg_fvec(base, XG_FV_TTL, p->ttl);
    if (m)
        m &= xg_fvec(base, XG_FV_FLAGS, tcp ? p->tcp_flags : XG_FV_NOTCP);
    if (!m)
        return XG_CONTINUE;
    __u64 plain = m & ~h->payload;          /* match on their header conditions alone */
    __u64 cand = m & h->payload;
    if (plain)
        cand &= (plain & -plain) - 1;       /* only payload filters ahead of the first plain one */
    __u32 slot0 = gen * XG_FILTERS_MAX;
    __u64 hit = plain & -plain;             /* the first plain one, unless a payload filter before it matches */
    for (int k = 0; k < XG_FILTERS_MAX; k++) {
        if (!cand)
            break;
        __u64 lsb = cand & -cand;
        cand ^= lsb;
        __u32 slot = slot0 + xg_bit_index(lsb);
        struct xg_filter *f = xg_fdef_arr.lookup(&slot);
        if (f && filter_payload(ctx, f, p)) {
            hit = lsb;
            break;
        }
    }
    if (!hit)
        return XG_CONTINUE;
    /* one verdict site (not one per loop exit): the verifier walks it once */
    __u32 idx = xg_bit_index(hit);
    __u32 slot = slot0 + idx;
    struct xg_filter *f = xg_fdef_arr.lookup(&slot);
    if (!f)
        return XG_CONTINUE;
    return filter_verdict(cfg, f, idx, p, skip_rest, now);
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

/* The limits for this packet: a per-port override, else the protected address's defaults. */
static __always_inline struct xg_limits *limits_for(struct xg_protected *prot, struct xg_pkt *p)
{
    if ((prot->flags & XG_PROT_PORT_LIMITS) && p->has_l4 &&
        (p->l4proto == IPPROTO_TCP || p->l4proto == IPPROTO_UDP)) {
        struct xg_limits *l = xg_portlim_hash.lookup(&p->dst);
        if (l)
            return l;
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
        /* Each address:port has a bucket of its own in xg_dstbkt_hash while the map has room;
         * once it is full (a flood over random ports), ports without one share their address's
         * bucket in xg_dstaddr_arr, which always exists: a full map neither lifts the limit nor
         * drops a packet for want of a bucket, and never touches another address. The
         * controller deletes idle buckets (policy.sweep_dst_buckets), so the map empties again. */
        struct xg_dst_bucket *db = xg_dstbkt_hash.lookup(&p->dst);
        if (!db) {
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

#include "syncookie.h"

/* Once an address went over its SYN threshold the defence stays up this long after the last
 * excess SYN, instead of letting the first threshold SYNs of each new second through. */
#define XG_SYN_HOLD_NS ONE_SEC_NS

/* Step 12b: SYN defence, above the address's SYN threshold (or always, XG_PROT_SYN_ALWAYS):
 * cookie mode answers the SYN with a SYN cookie (syncookie.h); retransmit mode makes sources
 * authenticate by retransmitting. */
static __always_inline __u32 step_syn_auth(struct xg_config *cfg, struct xg_protected *prot, struct xg_pkt *p,
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
        else if (t >= w->defend_until_ns)
            return XG_CONTINUE;
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

#include "tcpstate.h"
#include "geo.h"
#include "watermark.h"

/* Steps 6–12 after the lists and bans (malformed is decided by the caller's parsing). */
static __always_inline __u32 policy_steps_(struct xdp_md *ctx, struct xg_config *cfg, struct xg_protected *prot,
                                           struct xg_pkt *p, __u64 *now)
{
    __u32 r;
    r = step_geo(prot, p);  /* geo.h: after the lists (an allowlisted source never gets here) */
    if (r != XG_CONTINUE)
        return r;
    kg_lookup(p, now);                     /* the one lookup: is the source verified (knowngood.h) */
    if (p->l4proto == IPPROTO_UDP)
        kg_udp_count(prot, xg_now(now));   /* UDP peacetime of the address (knowngood.h) */
    if (p->is_frag && (cfg->flags & XG_CFG_DROP_FRAGMENTS))
        return XG_REASON_FRAGMENT;
    r = step_watermark(ctx, prot, p);  /* watermark.h: a valid mark is stripped and passes */
    if (r == XG_WM_PASSED)
        return XG_CONTINUE;
    if (r != XG_CONTINUE)
        return r;
    r = step_protocol(prot, p);
    if (r != XG_CONTINUE)
        return r;
    r = step_port(prot, p);
    if (r != XG_CONTINUE)
        return r;
    r = step_reflection(cfg, p);
    if (r != XG_CONTINUE)
        return r;
    int skip_rest = 0;
    r = step_feature(ctx, cfg, p, &skip_rest, now);
    if (r != XG_CONTINUE || skip_rest)
        return r;
    /* TCP state after the filters: placed before them, every path through the step enters the
     * 64-filter loop as its own verifier state (893K of the 1M instructions; here 556K). */
    r = step_tcpstate(cfg, prot, p, now);
    if (r == XG_REASON_TCPSTATE)
        r = step_cookie_ack(ctx, prot, p);  /* the ACK of a cookie handshake has no entry yet */
    if (r != XG_CONTINUE)
        return r;
    int is_syn = p->has_l4 && p->l4proto == IPPROTO_TCP && (p->tcp_flags & (XG_TCP_SYN | XG_TCP_ACK)) == XG_TCP_SYN;
    r = step_ratelimit(cfg, prot, limits_for(prot, p), p, is_syn, now);
    if (r != XG_CONTINUE)
        return r;
    if (is_syn)
        return step_syn_auth(cfg, prot, p, now);
    return XG_CONTINUE;
}

/* The drop reasons of the steps above that may hit a verified source by mistake (a fingerprint,
 * a count): their drops of verified sources are counted per filter or per reason (do no harm). */
#define XG_VDROP_REASONS ((1U << XG_REASON_FEATURE) | (1U << XG_REASON_MITIGATION) | \
                          (1U << XG_REASON_RATELIMIT) | (1U << XG_REASON_SYN))

static __always_inline __u32 policy_steps(struct xdp_md *ctx, struct xg_config *cfg, struct xg_protected *prot,
                                          struct xg_pkt *p, __u64 *now)
{
    __u32 r = policy_steps_(ctx, cfg, prot, p, now);
    if (r < 32 && ((1U << r) & XG_VDROP_REASONS) && kg_verified(p))
        kg_vdrop(p->filter_idx ? (__u32)(p->filter_idx - 1) : XG_FILTERS_MAX + r, 1);
    return r;
}

#endif /* XDPGUARD_POLICY_H */
