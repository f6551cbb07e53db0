/* steps/feature.h — packet feature filters (the operator's and the automatic mitigations'),
 * classified by per-field bit vectors: first match wins, the cost does not grow with the filters. */
#ifndef XDPGUARD_STEP_FEATURE_H
#define XDPGUARD_STEP_FEATURE_H

#include "common.h"
#include "maps.h"
#include "knowngood.h"
#include "ban.h"

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

/* The payload index: cand ANDed with the word of each byte position the index reads, until no
 * indexed filter is left among cand. Filters the index does not decide keep their bits (the
 * controller sets them in every word). A byte the packet does not have (past its end, or its base
 * missing: no L4 header) reads as XG_PV_ABSENT. The program is loaded without
 * BPF_F_XDP_HAS_FRAGS, so every frame it sees is linear: past data_end there is nothing (a
 * bpf_xdp_load_bytes there failed every time, ~16 ns a position: a SYN's short payload paid it
 * for 9 of the benchmark's 19 positions). */
static __always_inline __u64 payload_index(struct xdp_md *ctx, struct xg_phead *ph, __u32 gen, struct xg_pkt *p,
                                           __u64 cand)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 indexed = ph->indexed;
    __u32 npos = ph->npos;
    __u32 slot = gen * XG_PV_SLOTS;
#pragma unroll
    for (int k = 0; k < XG_PPOS_MAX; k++) {
        if (k >= npos || !(cand & indexed))
            break;
        __u32 pos = ph->pos[k];
        __u32 fb = pos >> XG_PPOS_OFF_BITS;
        __u32 base = fb == XG_FB_L3 ? p->l3_off : fb == XG_FB_L4 ? p->l4_off : p->payload_off;
        __u32 off = (base + (pos & ((1 << XG_PPOS_OFF_BITS) - 1))) & 0x1fff;
        __u32 v = XG_PV_ABSENT;
        __u8 *b = data + off;
        if (base && (void *)(b + 1) <= end)
            v = *b;
        __u32 idx = slot + k * XG_PV_VALUES + v;
        __u64 *w = xg_pvec_arr.lookup(&idx);
        cand &= w ? *w : ~indexed;
    }
    return cand;
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
 * match outright; the payload filters among the survivors before the first of those are decided
 * by the payload index (payload_index), and those it does not index are compared in order. */
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
    __u64 hit = plain & -plain;             /* the first plain one, unless a payload filter before it matches */
    struct xg_phead *ph = xg_phead_arr.lookup(&gen);
    if (cand && ph && ph->indexed) {
        cand = payload_index(ctx, ph, gen, p, cand);
        __u64 fast = cand & ph->indexed;    /* indexed filters whose payload condition holds */
        cand &= ~ph->indexed;               /* left to compare: the others ahead of the first of those */
        if (fast) {
            hit = fast & -fast;
            cand &= hit - 1;
        }
    }
    __u32 slot0 = gen * XG_FILTERS_MAX;
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

#endif /* XDPGUARD_STEP_FEATURE_H */
