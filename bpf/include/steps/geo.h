/* steps/geo.h — region (geo) blocking: drop a source by the country its address is registered in.
 *
 * One LPM lookup per packet to an address with a geo rule (a trie per family maps a source
 * prefix to a country index, abi.h), then one bit test in the address's country set: the cost
 * does not grow with the number of countries. An address without a rule pays the XG_PROT_GEO
 * flag test. Mode cc (XG_GEO_CC) lets TCP to the address's HTTP ports through: HAProxy challenges
 * those sources. The first step of policy_steps (xdpguard.bpf.c): after the lists, so an allowlisted source is never
 * geo-dropped, and before any step that keeps per-source state.
 */
#ifndef XDPGUARD_GEO_H
#define XDPGUARD_GEO_H

#include "common.h"
#include "maps.h"

static __always_inline __u32 step_geo(struct xg_protected *prot, struct xg_pkt *p)
{
    if (!(prot->flags & XG_PROT_GEO))
        return XG_CONTINUE;
    __u32 slot = prot->syn.slot;
    struct xg_geoset *gs = xg_geoset_arr.lookup(&slot);
    if (!gs)
        return XG_CONTINUE;
    /* XXX: one trie keyed (family, address) instead of two cost the verifier 200K more
     * instructions (862K), so each family has its own. */
    __u32 *cc;
    if (p->src.family == 4) {
        struct xg_lpm4_key k4 = { .prefixlen = 32 };
        __builtin_memcpy(&k4.addr, p->src.addr, 4);
        cc = xg_geo4_lpm.lookup(&k4);
    } else {
        struct xg_lpm6_key k6 = { .prefixlen = 128 };
        __builtin_memcpy(k6.addr, p->src.addr, 16);
        cc = xg_geo6_lpm.lookup(&k6);
    }
    __u32 idx = cc ? *cc : 0;
    /* a power-of-two mask, not a compare, bounds the word: the verifier loses (idx >> 6) * 8 */
    __u64 named = (gs->bits[(idx >> 6) & (XG_GEO_WORDS - 1)] >> (idx & 63)) & 1;
    if (gs->flags & XG_GEO_ONLY)
        named = !named;
    if (!named)
        return XG_CONTINUE;
    /* mode cc: TCP to a port HAProxy serves goes on to it, and HAProxy challenges the source
     * (l7/haproxy_config.py, the geo ACL); everything else of that source is dropped here */
    if ((gs->flags & XG_GEO_CC) && p->has_l4 && p->l4proto == IPPROTO_TCP) {
        struct xg_port_value *pv = xg_ports_hash.lookup(&p->dst);
        if (pv && (pv->flags & XG_PORT_BY_HTTP))
            return XG_CONTINUE;
    }
    return XG_REASON_GEO;
}

#endif /* XDPGUARD_GEO_H */
