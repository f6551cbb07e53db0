/* sample.h — 1-in-N per-CPU sampling of verdicts into a ring buffer (top talkers, capture).
 *
 * Cheap under spoofed floods: an unsampled packet costs one array lookup and one per-CPU
 * countdown. A sampled one is re-parsed (addresses, protocol, ports) and its first
 * XG_SAMPLE_SNAPLEN bytes are copied into a ring buffer record. Bypass traffic (not ours: the
 * host's own) is never sampled. When the ring is full (nobody reading) the sample is counted
 * as lost and nothing else happens. Layouts in abi.h.
 */
#ifndef XDPGUARD_SAMPLE_H
#define XDPGUARD_SAMPLE_H

#include "common.h"
#include "maps.h"
#include "parsing.h"

/* xg_sample_cfg: key 0 → struct xg_sample_config (sample_every: 1 in N, 0 = off). */
XG_MAP("array", int, struct xg_sample_config, xg_sample_cfg, 1, 0);

/* xg_sample_pcpu: key 0 → per-CPU struct xg_sample_state (countdown, taken, lost). */
XG_MAP("percpu_array", int, struct xg_sample_state, xg_sample_pcpu, 1, 0);

/* xg_samples: ring buffer of struct xg_sample records, XG_SAMPLE_RING_PAGES pages. */
BPF_RINGBUF_OUTPUT(xg_samples, XG_SAMPLE_RING_PAGES);

/* Fill addresses, protocol and ports of s from the packet, as far as it parses. */
static __always_inline void xg_sample_parse(struct xdp_md *ctx, struct xg_sample *s)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct xg_cursor c = { .pos = data };
    struct ethhdr *eth;
    void *l4 = 0;

    int proto = parse_ethhdr(&c, data_end, &eth);
    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *iph = c.pos;
        if ((void *)(iph + 1) > data_end)
            return;
        s->family = 4;
        s->proto = iph->protocol;
        __builtin_memcpy(s->src, &iph->saddr, 4);
        __builtin_memcpy(s->dst, &iph->daddr, 4);
        if (iph->ihl >= 5 && !(iph->frag_off & bpf_htons(0x1FFF)))
            l4 = c.pos + iph->ihl * 4;
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6h = c.pos;
        if ((void *)(ip6h + 1) > data_end)
            return;
        s->family = 6;
        s->proto = ip6h->nexthdr;
        __builtin_memcpy(s->src, ip6h->saddr.s6_addr, 16);
        __builtin_memcpy(s->dst, ip6h->daddr.s6_addr, 16);
        l4 = ip6h + 1;
    }
    if (l4 && (s->proto == IPPROTO_TCP || s->proto == IPPROTO_UDP)) {
        __be16 *ports = l4;
        if ((void *)(ports + 2) <= data_end) {
            s->sport = bpf_ntohs(ports[0]);
            s->dport = bpf_ntohs(ports[1]);
        }
    }
}

/* Called from record_verdict() with the final kind and reason of every verdict and the per-CPU
 * packet count of that (kind, reason) slot, just incremented. sample_every is a power of two
 * (the controller enforces it), so "every N-th packet of the slot" is a mask test on a counter
 * the program keeps anyway: no extra store on the unsampled path. */
static __always_inline void xg_sample_verdict(struct xdp_md *ctx, __u32 kind, __u32 reason, __u64 seen)
{
    __u32 zero = 0;
    if (reason == XG_REASON_BYPASS)
        return;
    struct xg_sample_config *sc = xg_sample_cfg.lookup(&zero);
    if (!sc || !sc->sample_every || (seen & (sc->sample_every - 1)))
        return;
    struct xg_sample_state *st = xg_sample_pcpu.lookup(&zero);
    if (!st)
        return;

    struct xg_sample *s = xg_samples.ringbuf_reserve(sizeof(struct xg_sample));
    if (!s) {
        st->lost += 1;
        return;
    }
    st->taken += 1;
    __u32 len = ctx->data_end - ctx->data;
    __builtin_memset(s, 0, __builtin_offsetof(struct xg_sample, data));
    s->ts_ns = bpf_ktime_get_ns();
    s->sample_every = sc->sample_every;
    s->pkt_len = len;
    s->kind = kind;
    s->reason = reason;
    xg_sample_parse(ctx, s);
    /* Copy min(len, XG_SAMPLE_SNAPLEN) bytes. The verifier must see 1 <= cap <= SNAPLEN on the
     * register passed to the helper; clang folds plain re-checks away, so the value goes
     * through a volatile slot and comes back as ((cap - 1) & (SNAPLEN - 1)) + 1. */
    volatile __u32 cap_m1 = (len < XG_SAMPLE_SNAPLEN ? len : XG_SAMPLE_SNAPLEN) - 1;
    __u32 cap = (cap_m1 & (XG_SAMPLE_SNAPLEN - 1)) + 1;
    if (len >= 1 && bpf_xdp_load_bytes(ctx, 0, s->data, cap) == 0)
        s->cap_len = cap;
    xg_samples.ringbuf_submit(s, 0);
}

#endif /* XDPGUARD_SAMPLE_H */
