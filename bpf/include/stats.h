/* stats.h — the single exit: turn (action, reason) into a verdict and count it per CPU. */
#ifndef XDPGUARD_STATS_H
#define XDPGUARD_STATS_H

#include "common.h"
#include "maps.h"
#include "sample.h"

static __always_inline int record_verdict(struct xdp_md *ctx, struct xg_config *cfg,
                                          int action, __u32 reason)
{
    /* XDP_TX (a SYN answered with a cookie) counts as a drop: the packet never reaches the kernel. */
    __u32 kind = action == XDP_DROP || action == XDP_TX ? XG_KIND_DROP : XG_KIND_PASS;

    /* Monitor mode: a drop whose reason is monitored is counted as would_drop and passed. */
    if (action == XDP_DROP && cfg && reason < XG_REASON_MAX &&
        (cfg->monitor_mask & (1ULL << reason))) {
        kind = XG_KIND_WOULD_DROP;
        action = XDP_PASS;
    }

    __u32 slot = kind * XG_REASON_MAX + (reason & (XG_REASON_MAX - 1));
    struct xg_counter *cnt = xg_stats_pcpu.lookup(&slot);
    if (cnt) {
        cnt->packets += 1;
        cnt->bytes += (__u64)(ctx->data_end - ctx->data);
#ifndef XG_SPEC_NO_SAMPLING
        xg_sample_verdict(ctx, kind, reason, cnt->packets);  /* sample.h: 1 in N, top talkers, capture */
#endif
    }
    return action;
}

#endif /* XDPGUARD_STATS_H */
