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

/* Both families go through one key type, struct xg_lpm6_key *: an IPv4 key is a struct
 * xg_lpm4_key (8 bytes) passed as one; the two share their prefix (prefixlen, then the address
 * at offset 4), and for family 4 only those 8 bytes are read (the v4 trie's key, the v4 host
 * hash's __u32 at addr). `family` and `list` are literals at every call site, so clang folds
 * each choice of map away (bcc rewrites map calls only outside macros, hence no macro). */
static __always_inline struct xg_list_entry *list_lookup(int list, int family, struct xg_lpm6_key *k)
{
    if (family == 4)
        return list == XG_LIST_BLOCK ? xg_block4_lpm.lookup((struct xg_lpm4_key *)k)
                                     : xg_allow4_lpm.lookup((struct xg_lpm4_key *)k);
    return list == XG_LIST_BLOCK ? xg_block6_lpm.lookup(k) : xg_allow6_lpm.lookup(k);
}

static __always_inline void list_delete(int list, int family, struct xg_lpm6_key *k)
{
    if (family == 4) {
        if (list == XG_LIST_BLOCK)
            xg_block4_lpm.delete((struct xg_lpm4_key *)k);
        else
            xg_allow4_lpm.delete((struct xg_lpm4_key *)k);
    } else {
        if (list == XG_LIST_BLOCK)
            xg_block6_lpm.delete(k);
        else
            xg_allow6_lpm.delete(k);
    }
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

static __always_inline int host_hit(int list, int family, struct xg_lpm6_key *k)
{
    if (family == 4)
        return host4_hit(list, (__u32 *)k->addr);
    struct xg_addr6 a6;
    __builtin_memcpy(a6.addr, k->addr, 16);
    return host6_hit(list, &a6);
}

/* The source's bit in the list's prefilter bitmap (abi.h XG_LPF_*; policy.lpf_bits computes the
 * same): an IPv4 source's top 16 bits, a hash of an IPv6 source's top 48. */
static __always_inline __u32 lpf_bit(int family, struct xg_lpm6_key *k)
{
    if (family == 4)
        return ((__u32)k->addr[0] << 8) | k->addr[1];
    __u64 x = ((__u64)k->addr[0] << 40) | ((__u64)k->addr[1] << 32) | ((__u64)k->addr[2] << 24) |
              ((__u64)k->addr[3] << 16) | ((__u64)k->addr[4] << 8) | k->addr[5];
    return (__u32)((x * 0x9E3779B97F4A7C15ULL) >> 48);
}

/* 1 when the prefilter is trusted (XG_LM_PREFILTER) and says no entry of the list covers the
 * source: one array read instead of a hash lookup and a trie walk. */
static __always_inline int lpf_miss(int list, int family, __u64 lists_mask, struct xg_lpm6_key *k)
{
    if (!(lists_mask & XG_LM_PREFILTER))
        return 0;
    __u32 bit = lpf_bit(family, k);
    __u32 word = (list * 2 + (family == 6)) * XG_LPF_WORDS + (bit >> 6);
    __u64 *w = xg_lpf_arr.lookup(&word);
    return w && !((*w >> (bit & 63)) & 1);
}

/* 1 when the source (k, full prefix length) is on the list: exact hash first, then the trie.
 * Maps the controller marked empty in lists_mask are not looked at, nor any when the prefilter
 * says no entry covers the source. An expired trie match is deleted (by its own prefix length)
 * and the lookup repeated, so it cannot shadow a live covering prefix. */
static __always_inline int list_hit(int list, int family, __u64 lists_mask, struct xg_lpm6_key *k)
{
    /* XG_LM_*: allow4 hash, lpm, allow6 hash, lpm, then the same four for the blocklist */
    __u32 shift = (list == XG_LIST_BLOCK ? 4 : 0) + (family == 4 ? 0 : 2);
    __u64 hbit = XG_LM_ALLOW4_HASH << shift;
    __u64 lbit = XG_LM_ALLOW4_LPM << shift;
    if (!(lists_mask & (hbit | lbit)) || lpf_miss(list, family, lists_mask, k))
        return 0;
    if ((lists_mask & hbit) && host_hit(list, family, k))
        return 1;
    if (!(lists_mask & lbit))
        return 0;
    __u32 full = k->prefixlen;
#pragma unroll
    for (int i = 0; i < XG_EXPIRED_RETRY; i++) {
        struct xg_list_entry *e = list_lookup(list, family, k);
        if (!e)
            return 0;
        if (xg_entry_live(e))
            return 1;
        k->prefixlen = e->prefixlen;
        list_delete(list, family, k);
        k->prefixlen = full;
    }
    return 0;
}

/* The allowlist (pass, every later step skipped) then the blocklist, for a source of `family`
 * (a literal) in k: XG_REASON_ALLOWLIST, XG_REASON_BLOCKLIST or XG_CONTINUE. */
static __always_inline __u32 step_lists(__u64 lists_mask, int family, struct xg_lpm6_key *k)
{
    if (list_hit(XG_LIST_ALLOW, family, lists_mask, k))
        return XG_REASON_ALLOWLIST;
    if (list_hit(XG_LIST_BLOCK, family, lists_mask, k))
        return XG_REASON_BLOCKLIST;
    return XG_CONTINUE;
}

#endif /* XDPGUARD_LISTS_H */
