/* steps/port.h — port policy: only the open TCP/UDP ports of a protected address are reachable;
 * and the service record's one lookup. */
#ifndef XDPGUARD_STEP_PORT_H
#define XDPGUARD_STEP_PORT_H

#include "common.h"
#include "maps.h"

/* Step 8: port policy (only with an L4 header: non-first fragments carry no ports). The one
 * hash lookup of (address, proto, port): the service record (abi.h xg_port_value) says whether
 * the port is open, and leaves in p where its limits and destination bucket are (xg_svc_arr),
 * for steps/ratelimit.h: an index, so the steps after the filters need no lookup of their own
 * (the pointer itself cannot cross into the record's copy in xg_pkt_pcpu). */
static __always_inline __u32 step_port(struct xg_protected *prot, struct xg_pkt *p)
{
    if (!(prot->flags & (XG_PROT_PORT_POLICY | XG_PROT_PORT_LIMITS)) || !p->has_l4)
        return XG_CONTINUE;
    if (p->l4proto != IPPROTO_TCP && p->l4proto != IPPROTO_UDP)
        return XG_CONTINUE;
    struct xg_port_value *sv = xg_ports_hash.lookup(&p->dst);
    __u64 f = sv ? sv->flags : 0;
    if ((prot->flags & XG_PROT_PORT_POLICY) && !(f & XG_PORT_OWNERS))
        return XG_REASON_PORT;
    if (sv && (f & XG_PORT_SLOT)) {
        p->svc = sv->slot + 1;
        p->svc_lim = (f & XG_PORT_LIMITS) && (prot->flags & XG_PROT_PORT_LIMITS);
    }
    return XG_CONTINUE;
}

#endif /* XDPGUARD_STEP_PORT_H */
