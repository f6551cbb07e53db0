/* steps/tcpflags.h — TCP flag combinations no stack sends: SYN with FIN, SYN with RST.
 *
 * Such a segment counts as a SYN for the later steps (no ACK: TCP state validation skips it,
 * the SYN defence would answer it with a cookie SYN-ACK) although it opens no connection; scans
 * and floods use it to slip past both. Dropped as `tcpflags` by the first step after the lists
 * and bans, so no feature filter (a pass filter) admits it. p->tcp_flags is 0 for anything but
 * a parsed TCP header.
 */
#ifndef XDPGUARD_STEP_TCPFLAGS_H
#define XDPGUARD_STEP_TCPFLAGS_H

#include "common.h"

static __always_inline __u32 step_tcpflags(struct xg_pkt *p)
{
    __u32 f = p->tcp_flags;
    /* SYN and (FIN or RST), branch-free: (f >> 1) is SYN in bit 0, f | (f >> 2) FIN or RST */
    return ((f >> 1) & (f | (f >> 2)) & 1) ? XG_REASON_TCPFLAGS : XG_CONTINUE;
}

#endif /* XDPGUARD_STEP_TCPFLAGS_H */
