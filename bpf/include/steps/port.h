/* steps/port.h — port policy: only the open TCP/UDP ports of a protected address are reachable. */
#ifndef XDPGUARD_STEP_PORT_H
#define XDPGUARD_STEP_PORT_H

#include "common.h"
#include "maps.h"

/* Step 8: port policy (only with an L4 header: non-first fragments carry no ports). */
static __always_inline __u32 step_port(struct xg_protected *prot, struct xg_pkt *p)
{
    if (!(prot->flags & XG_PROT_PORT_POLICY) || !p->has_l4)
        return XG_CONTINUE;
    if (p->l4proto != IPPROTO_TCP && p->l4proto != IPPROTO_UDP)
        return XG_CONTINUE;
    return xg_ports_hash.lookup(&p->dst) ? XG_CONTINUE : XG_REASON_PORT;
}

#endif /* XDPGUARD_STEP_PORT_H */
