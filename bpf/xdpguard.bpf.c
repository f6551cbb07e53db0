/* xdpguard.bpf.c — the XDP entry point: parses, then runs the stage list (DESIGN.md pipeline).
 *
 * Every path ends at `out:` → record_verdict(). Pass reasons: bypass (not ours), clean,
 * allowlist. Drop reasons: see abi.h; a SYN answered with a SYN cookie leaves as XDP_TX
 * (counted as a drop `syncookie`). Each cleansing step is one header under include/steps/,
 * included below and called once from the stage list (the lists and bans from the per-family
 * parse, the rest from policy_steps_a/_b); docs/hacking.md says how to add one.
 * xdpguard_egress (at the end) is the tc egress program that records connections for the
 * TCP state step (steps/tcpstate.h); it is compiled with this one so the two share their maps.
 */
#include "common.h"
#include "parsing.h"
#include "maps.h"
#include "stats.h"
#include "knowngood.h"

/* The steps, in pipeline order. */
#include "steps/lists.h"
#include "steps/banned.h"
#include "steps/tcpflags.h"
#include "steps/geo.h"
#include "steps/fragment.h"
#include "steps/protocol.h"
#include "steps/port.h"
#include "steps/reflection.h"
#include "steps/feature.h"
#include "steps/tcpstate.h"
#include "steps/syncookie.h"
#include "steps/ratelimit.h"
#include "steps/synauth.h"
#include "steps/budget.h"
#include "steps/watermark.h"
/* only with XG_FWD_FAST: the forwarding fast path, after the verdict */
#include "steps/fastfwd.h"

/* The packet's record for the steps from the filters on (policy_steps), and the limits that
 * apply to it (policy_steps_b). */
struct xg_pkt_scratch {
    struct xg_pkt p;
    struct xg_limits lim;
};

/* xg_pkt_pcpu: key 0 → per-CPU struct xg_pkt_scratch. Scratch, program-local (not in maps.h:
 * never pinned, never read by the controller). */
BPF_PERCPU_ARRAY(xg_pkt_pcpu, struct xg_pkt_scratch, 1);

#define XG_IP_MF     0x2000
#define XG_IP_OFFSET 0x1FFF

/* Parse the L4 header at the cursor into p (ports, flags, payload). -1: truncated/malformed. */
static __always_inline int parse_l4(struct xg_cursor *c, void *data, void *data_end, struct xg_pkt *p)
{
    struct tcphdr *tcph;
    struct udphdr *udph;
    struct xg_icmp_prefix *icmph;

    p->has_l4 = 1;
    p->l4_off = c->pos - data;
    switch (p->l4proto) {
    case IPPROTO_TCP:
        if (parse_tcphdr(c, data_end, &tcph) < 0)
            return -1;
        p->sport = bpf_ntohs(tcph->source);
        p->dport = bpf_ntohs(tcph->dest);
        p->tcp_flags = ((__u8 *)tcph)[13];
        p->tcp_seq = tcph->seq;
        break;
    case IPPROTO_UDP:
        if (parse_udphdr(c, data_end, &udph) < 0)
            return -1;
        p->sport = bpf_ntohs(udph->source);
        p->dport = bpf_ntohs(udph->dest);
        break;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
        if (parse_icmp(c, data_end, &icmph) < 0)
            return -1;
        /* the rest of the 8-byte ICMP header (id/sequence, unused, mtu…) precedes the payload */
        if (c->pos + 4 > data_end)
            return -1;
        c->pos += 4;
        break;
    default:
        p->payload_off = c->pos - data;
        return 0;
    }
    p->payload_off = c->pos - data;
    p->dst.port = p->dport;
    p->dst.proto = p->l4proto;
    return 0;
}

/* One line of the stage list: a step's verdict other than XG_CONTINUE ends the pipeline. */
#define XG_STEP(call)                \
    do {                             \
        __u32 r_ = (call);           \
        if (r_ != XG_CONTINUE)       \
            return r_;               \
    } while (0)

/* policy_steps_a's "go on with policy_steps_b" (no step returns it). */
#define XG_STEPS_B 0xfffffff0

/* The stage list after the lists and bans (malformed is decided by the parse): one line per step,
 * in pipeline order, in two parts (policy_steps says why). A step returns XG_CONTINUE or its
 * verdict. */
static __always_inline __u32 policy_steps_a(struct xdp_md *ctx, struct xg_config *cfg, struct xg_protected *prot,
                                           struct xg_pkt *p, __u64 *now)
{
    __u32 r;
    XG_STEP(step_tcpflags(p));             /* first: the cheapest place for the verifier (measured) */
    XG_STEP(step_geo(prot, p));            /* after the lists (an allowlisted source never gets here) */
    kg_lookup(p, now);                     /* the one lookup: is the source verified (knowngood.h) */
    if (p->l4proto == IPPROTO_UDP)
        kg_udp_count(prot, xg_now(now));   /* UDP peacetime of the address (knowngood.h) */
    XG_STEP(step_fragment(cfg, p));
    r = step_watermark(ctx, prot, p);      /* a valid mark is stripped and passes: the rest is skipped */
    if (r == XG_WM_PASSED)
        return XG_CONTINUE;
    XG_STEP(r);
    XG_STEP(step_protocol(prot, p));
    XG_STEP(step_port(prot, p));
    XG_STEP(step_reflection(cfg, p));
    return XG_STEPS_B;
}

static __always_inline __u32 policy_steps_b(struct xdp_md *ctx, struct xg_config *cfg, struct xg_protected *prot,
                                            struct xg_pkt *p, struct xg_limits *lim, __u64 *now)
{
    __u32 r;
    int skip_rest = 0;
    r = step_feature(ctx, cfg, p, &skip_rest, now);
    if (r != XG_CONTINUE || skip_rest)
        return r;
    /* TCP state after the filters: placed before them, every path through the step enters the
     * 64-filter loop as its own verifier state (893K of the 1M instructions; here 556K). */
    r = step_tcpstate(cfg, prot, p, now);
    if (r == XG_REASON_TCPSTATE)
        r = step_syncookie(ctx, prot, p);  /* the ACK of a cookie handshake has no entry yet */
    if (r != XG_CONTINUE)
        return r;
    XG_STEP(step_budget(prot, p, now));    /* unverified UDP per service, before any per-source state */
    int is_syn = p->has_l4 && p->l4proto == IPPROTO_TCP && (p->tcp_flags & (XG_TCP_SYN | XG_TCP_ACK)) == XG_TCP_SYN;
    /* The limits copied into the scratch record: from the address's entry or from the service
     * record's slot, two maps whose values the verifier would walk the rest with one by one
     * (measured: 165K of its 541K instructions). */
    __builtin_memcpy(lim, limits_for(prot, p), sizeof(*lim));
    XG_STEP(step_ratelimit(cfg, prot, lim, p, is_syn, now));
    if (is_syn)
        return step_synauth(cfg, prot, p, now);
    return XG_CONTINUE;
}

/* The drop reasons of the steps above that may hit a verified source by mistake (a fingerprint,
 * a count): their drops of verified sources are counted per filter or per reason (do no harm). */
#define XG_VDROP_REASONS ((1U << XG_REASON_FEATURE) | (1U << XG_REASON_MITIGATION) | \
                          (1U << XG_REASON_RATELIMIT) | (1U << XG_REASON_SYN))

/* The steps, on the packet's record: the second part runs on a copy in xg_pkt_pcpu. What the
 * verifier knows of the record on the stack (constants the parse and the first steps left: the
 * family, the protocol, flags) splits its walk into states that cannot be pruned; the filters and
 * every later step were walked once per such state (measured: 618K of the 1M instructions; with
 * the copy, whose fields it knows nothing of, 491K; with the limits copied too, 376K). The steps
 * of the second part write vstate, est, filter_idx and the limits' copy, read only by the
 * do-no-harm count below and by policy_steps_b itself: nothing is copied back. */
static __always_inline __u32 policy_steps(struct xdp_md *ctx, struct xg_config *cfg, struct xg_protected *prot,
                                          struct xg_pkt *p, __u64 *now)
{
    __u32 r = policy_steps_a(ctx, cfg, prot, p, now);
    if (r != XG_STEPS_B)
        return r;
    __u32 zero = 0;
    struct xg_pkt_scratch *q = xg_pkt_pcpu.lookup(&zero);
    if (!q)
        return XG_CONTINUE;            /* cannot happen (a one-slot array) */
    __builtin_memcpy(&q->p, p, sizeof(q->p));
    p = &q->p;
    r = policy_steps_b(ctx, cfg, prot, p, &q->lim, now);
    if (r < 32 && ((1U << r) & XG_VDROP_REASONS) && kg_verified(p))
        kg_vdrop(p->filter_idx ? (__u32)(p->filter_idx - 1) : XG_FILTERS_MAX + r, 1);
    return r;
}

int xdpguard_main(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct xg_cursor c = { .pos = data };
    int action = XDP_PASS;
    __u32 reason = XG_REASON_BYPASS;
    __u32 zero = 0;
    __u64 now = 0;
    struct ethhdr *eth;
    struct xg_protected *prot;
    struct xg_pkt p = {};

    struct xg_config *cfg = xg_config_arr.lookup(&zero);
    if (!cfg || !(cfg->flags & XG_CFG_ENABLED))
        goto out;

    int proto = parse_ethhdr(&c, data_end, &eth);
    p.len = data_end - data;

    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *iph = c.pos;
        /* The fixed header holds both addresses; without it the packet is not ours to judge. */
        if ((void *)(iph + 1) > data_end)
            goto out;
        __u32 daddr = iph->daddr;
        prot = xg_prot4_hash.lookup(&daddr);
        if (!prot)
            goto out;

        struct xg_lpm4_key k4 = { .prefixlen = 32, .addr = iph->saddr };
        reason = step_lists(cfg->lists_mask, 4, (struct xg_lpm6_key *)&k4);  /* (steps/lists.h: one key shape) */
        if (reason != XG_CONTINUE) {
            if (reason == XG_REASON_BLOCKLIST)
                action = XDP_DROP;
            goto out;
        }
        p.src.family = 4;
        __builtin_memcpy(p.src.addr, &iph->saddr, 4);
        p.dst.family = 4;
        __builtin_memcpy(p.dst.addr, &daddr, 4);
        p.l4proto = iph->protocol;     /* for a ban's verified check; the parse below confirms it */
        reason = step_banned(&p, &now);
        if (reason != XG_CONTINUE) {
            action = XDP_DROP;
            goto out;
        }

        p.l3_off = (void *)iph - data;
        int l4proto = parse_iphdr(&c, data_end, &iph);
        if (l4proto < 0 || iph->version != 4 || bpf_ntohs(iph->tot_len) < iph->ihl * 4) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
        p.l4proto = l4proto;
        p.ttl = iph->ttl;
        p.is_frag = (iph->frag_off & bpf_htons(XG_IP_MF | XG_IP_OFFSET)) != 0;
        /* Non-first fragments carry no L4 header: the steps that need one skip them. */
        if (!(iph->frag_off & bpf_htons(XG_IP_OFFSET)) && parse_l4(&c, data, data_end, &p) < 0) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6h;
        int l4proto = parse_ip6hdr(&c, data_end, &ip6h);
        if (l4proto < 0)
            goto out;
        struct xg_addr6 d6;
        __builtin_memcpy(d6.addr, ip6h->daddr.s6_addr, 16);
        prot = xg_prot6_hash.lookup(&d6);
        if (!prot)
            goto out;

        struct xg_lpm6_key k6 = { .prefixlen = 128 };
        __builtin_memcpy(k6.addr, ip6h->saddr.s6_addr, 16);
        reason = step_lists(cfg->lists_mask, 6, &k6);
        if (reason != XG_CONTINUE) {
            if (reason == XG_REASON_BLOCKLIST)
                action = XDP_DROP;
            goto out;
        }
        p.src.family = 6;
        __builtin_memcpy(p.src.addr, ip6h->saddr.s6_addr, 16);
        p.dst.family = 6;
        __builtin_memcpy(p.dst.addr, d6.addr, 16);
        p.l4proto = l4proto;           /* the first next header, for a ban's verified check */
        reason = step_banned(&p, &now);
        if (reason != XG_CONTINUE) {
            action = XDP_DROP;
            goto out;
        }

        p.l3_off = (void *)ip6h - data;
        if (ip6h->version != 6) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
        p.ttl = ip6h->hop_limit;
        __u32 frag = 0;
        int frag_nh = 0;
        l4proto = parse_ip6_chain(&c, data_end, l4proto, &frag, &frag_nh);
        if (l4proto < 0) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
        int first = !(frag & 0xFFF8);
        p.is_frag = frag != 0;
        if (!first)
            l4proto = frag_nh;
        p.l4proto = l4proto;
        if (first && parse_l4(&c, data, data_end, &p) < 0) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
    } else {
        goto out;
    }

    reason = policy_steps(ctx, cfg, prot, &p, &now);
    if (reason == XG_CONTINUE) {
        reason = XG_REASON_CLEAN;
#ifdef XG_FWD_FAST
        /* steps/fastfwd.h: xdpguard_fwd_in counts the verdict and forwards an established flow; the
         * call returns only when the slot is empty. Here, not after `out:`: a test of the reason
         * there would keep the verifier from pruning the states the pipeline ends in (+130K). */
        xg_fwd_prog.call(ctx, 0);
#endif
    } else if (reason == XG_SYNCOOKIE_TX) {
        action = XDP_TX;               /* counted as a drop `syncookie`: the SYN never reaches the kernel */
        reason = XG_REASON_SYNCOOKIE;
    } else {
        action = XDP_DROP;
    }

out:
    action = record_verdict(ctx, cfg, action, reason);
    if (action == XDP_TX)
        action = syncookie_reply(ctx, &p);  /* syncookie.h: the SYN becomes its SYN-ACK */
    return action;
}

/* tc egress (cls_bpf, direct action) on the protected interface: record the connections the
 * protected addresses send on. Always TC_ACT_OK: it never changes what leaves. */
int xdpguard_egress(struct __sk_buff *skb)
{
    return ts_egress((void *)(long)skb->data, (void *)(long)skb->data_end);
}

#ifdef XG_FWD_FAST
/* Tail-called by xdpguard_main for a clean packet (only with XG_FWD_FAST): the verdict counted as
 * the main program would have, then an established forward is rewritten and redirected to its
 * backend; anything else passes. */
int xdpguard_fwd_in(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct xg_config *cfg = xg_config_arr.lookup(&zero);
    record_verdict(ctx, cfg, XDP_PASS, XG_REASON_CLEAN);  /* the main program's single exit, for it */
    return step_fastfwd(ctx);
}

/* XDP on the backend-side interface (only with XG_FWD_FAST): a backend's answer on a fast flow
 * is rewritten back to the client and redirected out of the protected interface; what it sends
 * is recorded as tc egress would have (redirected frames never meet tc egress). Anything else
 * passes untouched. */
int xdpguard_fwd_return(struct xdp_md *ctx)
{
    int action = step_fastfwd(ctx);
    if (action != XDP_PASS)
        ts_egress((void *)(long)ctx->data, (void *)(long)ctx->data_end);
    return action;
}
#endif
