/* steps/fragment.h — the fragment policy: IP fragments (IPv4 MF/offset, an IPv6 fragment header)
 * are dropped when the configuration says so. */
#ifndef XDPGUARD_STEP_FRAGMENT_H
#define XDPGUARD_STEP_FRAGMENT_H

#include "common.h"

static __always_inline __u32 step_fragment(struct xg_config *cfg, struct xg_pkt *p)
{
    return p->is_frag && (cfg->flags & XG_CFG_DROP_FRAGMENTS) ? XG_REASON_FRAGMENT : XG_CONTINUE;
}

#endif /* XDPGUARD_STEP_FRAGMENT_H */
