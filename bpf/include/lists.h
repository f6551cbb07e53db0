/* lists.h — allowlist/blocklist entry semantics: an entry counts only while unexpired. */
#ifndef XDPGUARD_LISTS_H
#define XDPGUARD_LISTS_H

/* True when entry e exists and has not expired; counts the hit on the entry itself.
 * The clock is read only for entries that carry an expiry. Expired entries stay in the map
 * (inert) until the controller sweeps them. */
static __always_inline int xg_entry_live(struct xg_list_entry *e)
{
    if (!e)
        return 0;
    if (e->expires_ns && e->expires_ns <= bpf_ktime_get_ns())
        return 0;
    __sync_fetch_and_add(&e->hits, 1);
    return 1;
}

#endif /* XDPGUARD_LISTS_H */
