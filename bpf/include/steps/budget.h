/* steps/budget.h — admission per service for unverified traffic (issue 25, item 2).
 *
 * Each UDP service (protected address, udp, port) has one token bucket for the packets of
 * sources that are not verified (knowngood.h): a flood from a million random sources costs one
 * shared bucket, never per-source state, and what it gets through is bounded whatever its
 * shape. Verified sources (UDP-verified in peacetime, TCP-verified) are never charged and never
 * dropped here: they keep their own per-source privilege bucket (kg_check), and past it they are
 * judged as anyone, i.e. charged here.
 *
 * The unit is a packet of up to 128 bytes (frame length); a larger one costs one unit per 128
 * bytes started (a rate below 12/s never admits a 1,500-byte frame: the burst is at most one second's), so the budget bounds packets (conntrack entries) and bytes
 * (the backend's link) alike: the default 1,000/s is 1,000 small packets or ~1 Mbit/s. (In the
 * lab, with a 2 Mbit/s backend link, a random-length flood admitted by packets alone filled the
 * link and the verified client's answers were lost in the backend's queue.)
 *
 * Why: every admitted packet of a spoofed random-port flood is a new conntrack entry (a NAT port
 * towards the backend, 30 s). Unbounded, a 30k pps flood filled the masquerade port space of
 * one backend (~64.5k) and took the service down for everyone; with this budget the flood's
 * share of the table is at most rate x the UDP conntrack timeout (1,000/s x 30 s = 30k entries
 * by default). Drops are reason 22 `budget`; in monitor mode they are would-drops (no effect).
 *
 * The rate: xg_budget.rate when the controller wrote one for the service (0: none), else
 * xg_verify_config.budget_udp_pps, else XG_BUDGET_UDP_PPS; burst a tenth of a second of it (XG_BUDGET_BURST_DIV). Off
 * everywhere with XG_VC_NO_BUDGET. XDP creates a service's entry on its first UDP packet (after
 * the port policy: with it on, only open ports get one); once xg_budget_hash is full, the
 * address's other ports share its slot in xg_budaddr_arr (never fails open or closed). The
 * controller sweeps idle entries (policy.sweep_budgets) and reads the counters
 * (policy.read_budgets). TCP: budget_syn_admit, below (new connections per service).
 */
#ifndef XDPGUARD_BUDGET_H
#define XDPGUARD_BUDGET_H

#include "common.h"
#include "maps.h"
#include "knowngood.h"
#include "steps/ratelimit.h"

#ifndef XG_BUDGET_MAX
#define XG_BUDGET_MAX 16384        /* services with a bucket of their own */
#endif
#define XG_BUDGET_UDP_PPS 1000     /* default rate of unverified UDP units per service */
#ifndef XG_BUDGET_TCP_SYNS
#define XG_BUDGET_TCP_SYNS 500     /* default unverified SYNs/s per TCP service below the SYN threshold */
#endif
#define XG_BUDGET_UNIT_SHIFT 7     /* a unit: a packet of up to 128 bytes (frame length) */
/* The burst: a tenth of a second of the rate, at least XG_BUDGET_BURST_MIN units (a 1,500-byte frame
 * is 12), at most the rate. A burst of one second let a pulsed flood through in spikes: trafgen's
 * `--rate 30000pps` sends 30,000 packets in ~0.3 s at ~100 kpps, then idles, every second; the
 * bucket refilled in the idle part and admitted 1,000 packets (106 KB) within a few ms of each
 * burst's start, into a 2 Mbit/s backend link that holds ~21 KB: its queue overflowed (tbf drops
 * 3,149 in 6 s) and the verified UDP client's answers waited behind it (p99.9 85 ms; 77 % of its
 * rate; 97 % with a rate of 200). */
#define XG_BUDGET_BURST_DIV 10
#define XG_BUDGET_BURST_MIN 64

/* xg_budget_hash value (per protected address:udp:port) and xg_budaddr_arr value (per address
 * slot). XXX: unlocked like the other buckets: racing CPUs may lose a refill, a take or a count. */
struct xg_budget {
    __u64 last_ns;
    __u64 tokens;              /* nano-units (XG_TOKEN per unit) */
    __u64 rate;                /* units/s set by the controller; 0: the default */
    __u64 admitted;            /* unverified packets admitted */
    __u64 dropped;             /* unverified packets over the budget (reason 22) */
    __u64 verified;            /* packets of verified sources, passed without a charge */
};

XG_MAP("hash", struct xg_port_key, struct xg_budget, xg_budget_hash, XG_BUDGET_MAX, 0);
XG_MAP("array", int, struct xg_budget, xg_budaddr_arr, XG_PROTECTED_MAX, 0);

/* The service's entry (made on its first packet), else the address's slot once the map is full. */
static __always_inline struct xg_budget *budget_entry(struct xg_protected *prot, struct xg_pkt *p)
{
    struct xg_budget *b = xg_budget_hash.lookup(&p->dst);
    if (!b) {
        struct xg_budget fresh = {};   /* last_ns 0: the first take refills it to a full burst */
        xg_budget_hash.update(&p->dst, &fresh);
        b = xg_budget_hash.lookup(&p->dst);
    }
    if (!b) {
        __u32 slot = prot->syn.slot;
        b = xg_budaddr_arr.lookup(&slot);
    }
    return b;
}

/* Take `units` from the entry's bucket at `rate`/s (burst: XG_BUDGET_BURST_DIV); 1 when they were there. */
static __always_inline int budget_take(struct xg_budget *b, __u64 rate, __u64 units, __u64 *now)
{
    rate = xg_min(rate, 4000000000ULL);    /* bucket_take's bound */
    __u64 tenth = rate / XG_BUDGET_BURST_DIV;
    __u64 burst = xg_min(rate, tenth + XG_BUDGET_BURST_MIN - xg_min(tenth, XG_BUDGET_BURST_MIN));  /* max(tenth, MIN) */
    return bucket_take(&b->tokens, &b->last_ns, xg_now(now), rate, burst, 0, units * XG_TOKEN);
}

/* The budget step: XG_CONTINUE, or XG_REASON_BUDGET for an unverified UDP packet over its
 * service's budget. Called after kg_lookup (p->vstate) and before the per-source limits, so a
 * dropped flood packet never reaches per-source state. */
static __always_inline __u32 step_budget(struct xg_protected *prot, struct xg_pkt *p, __u64 *now)
{
    if (!p->has_l4 || p->l4proto != IPPROTO_UDP)
        return XG_CONTINUE;
    struct xg_verify_config *vc = xg_vcfg();
    if (!vc || (vc->flags & XG_VC_NO_BUDGET))
        return XG_CONTINUE;
    struct xg_budget *b = budget_entry(prot, p);
    if (!b)
        return XG_CONTINUE;
    if (kg_verified(p)) {
        b->verified += 1;
        return XG_CONTINUE;
    }
    __u64 rate = xg_or_default(b->rate, xg_or_default(vc->budget_udp_pps, XG_BUDGET_UDP_PPS));
    __u64 units = ((__u64)(p->len & 0xffff) + (1 << XG_BUDGET_UNIT_SHIFT) - 1) >> XG_BUDGET_UNIT_SHIFT;
    if (budget_take(b, rate, units, now)) {
        b->admitted += 1;
        return XG_CONTINUE;
    }
    b->dropped += 1;
    return XG_REASON_BUDGET;
}

/* New TCP connections per service (step_synauth's hook, below the address's SYN threshold):
 * 1 when this SYN goes on to the kernel as before — a verified source (counted in `verified`,
 * never charged), the budget switched off, or within the service's rate (`admitted`) — and 0
 * past it (`dropped`): the SYN then meets the SYN defence as if the
 * address were over its threshold (a cookie SYN-ACK, or retransmit authentication for IPv6
 * and the retransmit mode). Why: every SYN that reaches the kernel is a conntrack entry for
 * 120 s (SYN_SENT: a spoofed source never answers); under the address's threshold (5,000/s
 * by default, counted over all services and all sources) a spoofed flood at 4,000/s keeps
 * 480,000 (the lab's table holds 262,144; acceptance row "SYN tcp/80 IPv6, spoofed, 4,000/s",
 * 20 s: conntrack peak 38 % enforcing, 38 % in monitor mode; with this budget 10 % vs 37 %).
 * With it a flood keeps at most 500/s x 120 s = 60,000, and a real new client over the
 * budget still gets in (IPv4: its cookie ACK, synproxy; IPv6: its retransmission) and is
 * verified from then on. A SYN costs one unit. The rate, as for UDP: xg_budget.rate when the
 * controller wrote one for the service (learned from its peacetime: daemon/budgets.py), else
 * xg_verify_config.budget_tcp_syns (`verify set --budget-tcp-syns`), else XG_BUDGET_TCP_SYNS.
 * XXX: a full map shares the address's slot (and its rate) with its UDP services. */
static __always_inline int budget_syn_admit(struct xg_protected *prot, struct xg_pkt *p, __u64 *now)
{
    struct xg_verify_config *vc = xg_vcfg();
    if (!vc || (vc->flags & XG_VC_NO_BUDGET))
        return 1;
    struct xg_budget *b = budget_entry(prot, p);
    if (!b)
        return 1;
    if (kg_verified(p)) {
        b->verified += 1;
        return 1;
    }
    __u64 rate = xg_or_default(b->rate, xg_or_default(vc->budget_tcp_syns, XG_BUDGET_TCP_SYNS));
    if (budget_take(b, rate, 1, now)) {
        b->admitted += 1;
        return 1;
    }
    b->dropped += 1;
    return 0;
}

#endif /* XDPGUARD_BUDGET_H */
