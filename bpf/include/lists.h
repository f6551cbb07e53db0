/* lists.h — allowlist/blocklist lookups: an entry counts only while unexpired.
 *
 * An LPM lookup returns only the longest match, so an expired /32 would hide a live /24 that
 * covers the same source. The data path therefore deletes an expired entry it meets and looks
 * again, up to XG_EXPIRED_RETRY times. XXX: more expired entries nested on one source than that
 * are skipped over only as later packets delete them one by one.
 */
#ifndef XDPGUARD_LISTS_H
#define XDPGUARD_LISTS_H

/* 1: e is live (its hit is counted); 0: e has expired. The clock is read only for entries
 * that carry an expiry. */
static __always_inline int xg_entry_live(struct xg_list_entry *e)
{
    if (e->expires_ns && e->expires_ns <= bpf_ktime_get_ns())
        return 0;
    __sync_fetch_and_add(&e->hits, 1);
    return 1;
}

#define XG_LIST_ALLOW 0
#define XG_LIST_BLOCK 1

/* bcc rewrites map calls only outside macros, so the per-map choice is a constant-folded
 * branch (list is a literal at every call site). */
static __always_inline struct xg_list_entry *list4_lookup(int list, struct xg_lpm4_key *k)
{
    return list == XG_LIST_BLOCK ? xg_block4_lpm.lookup(k) : xg_allow4_lpm.lookup(k);
}

static __always_inline void list4_delete(int list, struct xg_lpm4_key *k)
{
    if (list == XG_LIST_BLOCK)
        xg_block4_lpm.delete(k);
    else
        xg_allow4_lpm.delete(k);
}

static __always_inline struct xg_list_entry *list6_lookup(int list, struct xg_lpm6_key *k)
{
    return list == XG_LIST_BLOCK ? xg_block6_lpm.lookup(k) : xg_allow6_lpm.lookup(k);
}

static __always_inline void list6_delete(int list, struct xg_lpm6_key *k)
{
    if (list == XG_LIST_BLOCK)
        xg_block6_lpm.delete(k);
    else
        xg_allow6_lpm.delete(k);
}

/* 1 on a live match of the source in k (k->prefixlen is the full length on entry). An expired
 * match is deleted (by its own prefix length) and the lookup repeated. */
static __always_inline int list4_hit(int list, struct xg_lpm4_key *k)
{
    __u32 full = k->prefixlen;
#pragma unroll
    for (int i = 0; i < XG_EXPIRED_RETRY; i++) {
        struct xg_list_entry *e = list4_lookup(list, k);
        if (!e)
            return 0;
        if (xg_entry_live(e))
            return 1;
        k->prefixlen = e->prefixlen;
        list4_delete(list, k);
        k->prefixlen = full;
    }
    return 0;
}

static __always_inline int list6_hit(int list, struct xg_lpm6_key *k)
{
    __u32 full = k->prefixlen;
#pragma unroll
    for (int i = 0; i < XG_EXPIRED_RETRY; i++) {
        struct xg_list_entry *e = list6_lookup(list, k);
        if (!e)
            return 0;
        if (xg_entry_live(e))
            return 1;
        k->prefixlen = e->prefixlen;
        list6_delete(list, k);
        k->prefixlen = full;
    }
    return 0;
}

#endif /* XDPGUARD_LISTS_H */
