/* steps/lists.h — allowlist/blocklist lookups: an entry counts only while unexpired.
 *
 * An LPM lookup returns only the longest match, so an expired /32 would hide a live /24 that
 * covers the same source. The data path therefore deletes an expired entry it meets and looks
 * again, up to XG_EXPIRED_RETRY times. XXX: more expired entries nested on one source than that
 * are skipped over only as later packets delete them one by one.
 */
#ifndef XDPGUARD_LISTS_H
#define XDPGUARD_LISTS_H

#include "common.h"
#include "maps.h"

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

/* Exact (host) entries: 1 on a live hit; an expired one is deleted. */
static __always_inline int host4_hit(int list, __u32 *addr)
{
    struct xg_list_entry *e = list == XG_LIST_BLOCK ? xg_block4_hash.lookup(addr) : xg_allow4_hash.lookup(addr);
    if (!e)
        return 0;
    if (xg_entry_live(e))
        return 1;
    if (list == XG_LIST_BLOCK)
        xg_block4_hash.delete(addr);
    else
        xg_allow4_hash.delete(addr);
    return 0;
}

static __always_inline int host6_hit(int list, struct xg_addr6 *addr)
{
    struct xg_list_entry *e = list == XG_LIST_BLOCK ? xg_block6_hash.lookup(addr) : xg_allow6_hash.lookup(addr);
    if (!e)
        return 0;
    if (xg_entry_live(e))
        return 1;
    if (list == XG_LIST_BLOCK)
        xg_block6_hash.delete(addr);
    else
        xg_allow6_hash.delete(addr);
    return 0;
}

/* 1 when the source (k, prefixlen 32) is on the list: exact hash first, then the trie. Maps the
 * controller marked empty in lists_mask are not looked at. An expired trie match is deleted (by
 * its own prefix length) and the lookup repeated, so it cannot shadow a live covering prefix. */
static __always_inline int list4_hit(int list, __u64 lists_mask, struct xg_lpm4_key *k)
{
    __u64 hbit = list == XG_LIST_BLOCK ? XG_LM_BLOCK4_HASH : XG_LM_ALLOW4_HASH;
    __u64 lbit = list == XG_LIST_BLOCK ? XG_LM_BLOCK4_LPM : XG_LM_ALLOW4_LPM;
    if ((lists_mask & hbit) && host4_hit(list, &k->addr))
        return 1;
    if (!(lists_mask & lbit))
        return 0;
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

static __always_inline int list6_hit(int list, __u64 lists_mask, struct xg_lpm6_key *k)
{
    __u64 hbit = list == XG_LIST_BLOCK ? XG_LM_BLOCK6_HASH : XG_LM_ALLOW6_HASH;
    __u64 lbit = list == XG_LIST_BLOCK ? XG_LM_BLOCK6_LPM : XG_LM_ALLOW6_LPM;
    if (lists_mask & hbit) {
        struct xg_addr6 a;
        __builtin_memcpy(a.addr, k->addr, 16);
        if (host6_hit(list, &a))
            return 1;
    }
    if (!(lists_mask & lbit))
        return 0;
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
