/* steps/tcpstate.h — TCP state validation: our own connection table, written on egress, read in XDP.
 *
 * bcc 0.26 cannot call the conntrack kfuncs, so the protector keeps its own table. The tc egress
 * program (xdpguard_egress, cls_bpf direct-action on the protected interface, after nftables has
 * un-NATed a backend's reply) records every TCP connection a protected address sends on. XDP then
 * admits a non-SYN TCP packet to a protected address only when its connection is recorded:
 *
 *   egress from protected addr:port to client:port      XDP, client → protected (non-SYN)
 *   SYN-ACK (or our own outbound SYN) → xg_embryo_lru    looked up in xg_flow_lru, then
 *   ACK / data / FIN → xg_flow_lru (embryo promoted)     xg_embryo_lru; a live entry admits it,
 *   RST → the recorded entry expires soon                 else drop `tcpstate` (after a grace
 *                                                         period following attach)
 *
 * Spoofed packets never insert: only what the protected side sends does. A spoofed SYN flood at
 * an open port makes the server answer SYN-ACKs, which land in the separate embryo table, so the
 * established connections are never evicted by it. Timeouts are idle timeouts refreshed by the
 * protected side's packets (at most one write per connection per second).
 *
 * The step runs for an address whose port policy is on (it has open ports or forwards) unless
 * XG_PROT_TCPSTATE_OFF is set, and only while XG_CFG_TCPSTATE says the recorder is attached.
 */
#ifndef XDPGUARD_TCPSTATE_H
#define XDPGUARD_TCPSTATE_H

#include "common.h"
#include "maps.h"
#include "parsing.h"
#include "knowngood.h"

#define XG_TC_ACT_OK 0

static __always_inline __u64 ts_timeout_ns(__u32 configured_s, __u32 default_s)
{
    return (__u64)(configured_s ? configured_s : default_s) * ONE_SEC_NS;
}

/* Step 9b: a non-SYN TCP packet must belong to a recorded connection. */
static __always_inline __u32 step_tcpstate(struct xg_config *cfg, struct xg_protected *prot, struct xg_pkt *p,
                                           __u64 *now)
{
    if (!(cfg->flags & XG_CFG_TCPSTATE) || !p->has_l4 || p->l4proto != IPPROTO_TCP ||
        (p->tcp_flags & (XG_TCP_SYN | XG_TCP_ACK)) == XG_TCP_SYN)
        return XG_CONTINUE;
    if ((prot->flags & (XG_PROT_PORT_POLICY | XG_PROT_TCPSTATE_OFF)) != XG_PROT_PORT_POLICY)
        return XG_CONTINUE;
    struct xg_flow_key k = {};
    __builtin_memcpy(k.client, p->src.addr, 16);
    __builtin_memcpy(k.prot, p->dst.addr, 16);
    k.client_port = p->sport;
    k.prot_port = p->dport;
    k.family = p->src.family;
    __u64 t = xg_now(now);
    struct xg_flow *f = xg_flow_lru.lookup(&k);
    if (f && f->expires_ns > t) {
        p->est = 1;                    /* an established connection: its packets are no spoofer's */
        return XG_CONTINUE;
    }
    f = xg_embryo_lru.lookup(&k);
    if (f && f->expires_ns > t)
        return XG_CONTINUE;
    __u32 zero = 0;
    struct xg_tcpstate_config *tc = xg_tcpcfg_arr.lookup(&zero);
    if (tc && t < tc->grace_until_ns)
        return XG_CONTINUE;
    return XG_REASON_TCPSTATE;
}

/* Write expiry and state into a recorded entry unless it was refreshed less than 1 s ago with
 * the same state (keeps the egress path from dirtying a cache line per packet). */
static __always_inline void ts_refresh(struct xg_flow *f, __u64 t, __u64 timeout, __u32 state)
{
    __u64 exp = t + timeout;
    if (f->state == state && f->expires_ns <= exp && f->expires_ns + ONE_SEC_NS > exp)
        return;
    f->expires_ns = exp;
    f->state = state;
}

/* Record one egress TCP segment from protected address:port to client:port (key filled). */
static __always_inline void ts_record(struct xg_flow_key *k, __u8 flags)
{
    __u32 zero = 0;
    struct xg_tcpstate_config *tc = xg_tcpcfg_arr.lookup(&zero);
    __u32 est_s = 0, fin_s = 0, rst_s = 0, syn_s = 0;
    if (tc) {
        est_s = tc->est_timeout_s;
        fin_s = tc->fin_timeout_s;
        rst_s = tc->rst_timeout_s;
        syn_s = tc->syn_timeout_s;
    }
    __u64 t = bpf_ktime_get_ns();
    struct xg_flow *f = xg_flow_lru.lookup(k);

    if (flags & XG_TCP_RST) {
        /* Shorten what is recorded; a RST never creates an entry. */
        __u64 exp = t + ts_timeout_ns(rst_s, XG_TS_RST_TIMEOUT_S);
        if (f && (f->state != XG_FLOW_RST || f->expires_ns > exp)) {
            f->expires_ns = exp;
            f->state = XG_FLOW_RST;
        }
        struct xg_flow *e = xg_embryo_lru.lookup(k);
        if (e && e->expires_ns > exp) {
            e->expires_ns = exp;
            e->state = XG_FLOW_RST;
        }
        return;
    }
    if (flags & XG_TCP_SYN) {
        if (f) {               /* a new connection on a recorded 4-tuple: established again */
            ts_refresh(f, t, ts_timeout_ns(est_s, XG_TS_EST_TIMEOUT_S), XG_FLOW_EST);
            return;
        }
        __u64 timeout = ts_timeout_ns(syn_s, XG_TS_SYN_TIMEOUT_S);
        struct xg_flow *e = xg_embryo_lru.lookup(k);
        if (e) {
            ts_refresh(e, t, timeout, XG_FLOW_SYN);
            return;
        }
        struct xg_flow fresh = { .expires_ns = t + timeout, .state = XG_FLOW_SYN };
        xg_embryo_lru.update(k, &fresh);
        return;
    }
    __u32 state = (flags & XG_TCP_FIN) || (f && f->state == XG_FLOW_FIN) ? XG_FLOW_FIN : XG_FLOW_EST;
    __u64 timeout = state == XG_FLOW_FIN ? ts_timeout_ns(fin_s, XG_TS_FIN_TIMEOUT_S)
                                         : ts_timeout_ns(est_s, XG_TS_EST_TIMEOUT_S);
    if (f) {
        ts_refresh(f, t, timeout, state);
        return;
    }
    struct xg_flow fresh = { .expires_ns = t + timeout, .state = state };
    xg_flow_lru.update(k, &fresh);
    xg_embryo_lru.delete(k);   /* promoted */
}

/* The egress program's work: parse, and record TCP from a protected address. Never drops. */
static __always_inline int ts_egress(void *data, void *data_end)
{
    struct xg_cursor c = { .pos = data };
    struct ethhdr *eth;
    struct xg_flow_key k = {};
    struct tcphdr *tcph;
    int l4proto;
    struct xg_protected *prot;

    int proto = parse_ethhdr(&c, data_end, &eth);
    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *iph;
        l4proto = parse_iphdr(&c, data_end, &iph);
        if ((l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP) || (iph->frag_off & bpf_htons(0x1FFF)))
            return XG_TC_ACT_OK;
        __u32 saddr = iph->saddr;
        prot = xg_prot4_hash.lookup(&saddr);
        if (!prot)
            return XG_TC_ACT_OK;
        __builtin_memcpy(k.prot, &saddr, 4);
        __builtin_memcpy(k.client, &iph->daddr, 4);
        k.family = 4;
        if (l4proto == IPPROTO_UDP) {   /* a UDP answer: verified in peacetime (knowngood.h) */
            kg_learn(prot, XG_VF_UDP, 4, k.client);
            return XG_TC_ACT_OK;
        }
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6h;
        l4proto = parse_ip6hdr(&c, data_end, &ip6h);
        if (l4proto < 0)
            return XG_TC_ACT_OK;
        struct xg_addr6 s6;
        __builtin_memcpy(s6.addr, ip6h->saddr.s6_addr, 16);
        prot = xg_prot6_hash.lookup(&s6);
        if (!prot)
            return XG_TC_ACT_OK;
        l4proto = parse_ip6_ext(&c, data_end, l4proto);
        if (l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP)
            return XG_TC_ACT_OK;
        __builtin_memcpy(k.prot, s6.addr, 16);
        __builtin_memcpy(k.client, ip6h->daddr.s6_addr, 16);
        k.family = 6;
        if (l4proto == IPPROTO_UDP) {
            kg_learn(prot, XG_VF_UDP, 6, k.client);
            return XG_TC_ACT_OK;
        }
    } else {
        return XG_TC_ACT_OK;
    }
    if (parse_tcphdr(&c, data_end, &tcph) < 0)
        return XG_TC_ACT_OK;
    k.prot_port = bpf_ntohs(tcph->source);
    k.client_port = bpf_ntohs(tcph->dest);
    __u8 flags = ((__u8 *)tcph)[13];
    ts_record(&k, flags);
    if ((flags & (XG_TCP_SYN | XG_TCP_RST | XG_TCP_ACK)) == XG_TCP_ACK)
        kg_learn(prot, XG_VF_TCP, k.family, k.client);   /* established: the client is verified */
    return XG_TC_ACT_OK;
}

#endif /* XDPGUARD_TCPSTATE_H */
