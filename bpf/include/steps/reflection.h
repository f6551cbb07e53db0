/* steps/reflection.h — UDP from a reflector source port (DNS, NTP, memcached…) is dropped. */
#ifndef XDPGUARD_STEP_REFLECTION_H
#define XDPGUARD_STEP_REFLECTION_H

#include "common.h"
#include "maps.h"

/* Step 9: UDP reflection source ports. */
static __always_inline __u32 step_reflection(struct xg_config *cfg, struct xg_pkt *p)
{
    if (!(cfg->flags & XG_CFG_REFLECTION) || !p->has_l4 || p->l4proto != IPPROTO_UDP)
        return XG_CONTINUE;
    __u32 port = p->sport;
    __u8 *on = xg_reflect_arr.lookup(&port);
    return (on && *on) ? XG_REASON_REFLECTION : XG_CONTINUE;
}


#endif /* XDPGUARD_STEP_REFLECTION_H */
