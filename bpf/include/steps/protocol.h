/* steps/protocol.h — protocol blocking per protected address (TCP, UDP, ICMP, other). */
#ifndef XDPGUARD_STEP_PROTOCOL_H
#define XDPGUARD_STEP_PROTOCOL_H

#include "common.h"

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

#endif /* XDPGUARD_STEP_PROTOCOL_H */
