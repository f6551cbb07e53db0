/* steps/syncookie.h — SYN cookies in XDP: answer a SYN with a cookie SYN-ACK (XDP_TX), check the ACK.
 *
 * In SYN-defence mode (above the address's syn_threshold_pps, or always with XG_PROT_SYN_ALWAYS)
 * an address with XG_PROT_SYN_COOKIE answers every SYN itself: the cookie comes from the
 * kernel's bpf_tcp_raw_gen_syncookie_ipv4/6 (the kernel's own syncookie secret), the SYN-ACK is
 * built in place over the SYN and sent back out of the interface. No state is kept, so a
 * spoofed flood fills nothing. The returning ACK belongs to no recorded connection: the TCP
 * state step hands it here (step_syncookie), bpf_tcp_raw_check_syncookie_ipv4/6 validates it,
 * a good one passes to the kernel, a bad one is dropped as `tcpstate`. In the kernel, nftables `synproxy`
 * (the input-hook rule of our table, nat.py) checks the same cookie again — the secret is the
 * kernel's, so it agrees — and opens the real connection to the backend through our DNAT
 * (a `nat hook output` chain: synproxy's SYN leaves through LOCAL_OUT). Its window update to
 * the client leaves through tc egress, where tcpstate.h records the connection.
 *
 * The SYN-ACK carries the MSS option only (MSS = the cookie's MSS, at most XG_SC_MSS4/6) and a
 * zero window, so the client sends no data before synproxy's window update.
 * XXX: no timestamp option, hence no window scaling and no SACK on such connections (synproxy
 *      learns the client's wscale/SACK only from a timestamp cookie, as the kernel's
 *      xdp_synproxy selftest encodes them).
 * XXX: IPv6 is off unless compiled with XG_SYNCOOKIE_IPV6=1: XDP builds correct IPv6 cookie
 *      SYN-ACKs and checks their ACKs (tests/bpf/test_syncookie.py), but nft synproxy (6.18 and
 *      6.1) drops every IPv6 ACK whose checksum is not already CHECKSUM_UNNECESSARY:
 *      nft_synproxy_do_eval() verifies the TCP checksum with nf_ip_checksum(), the IPv4 routine,
 *      for both families (veth, and any NIC without rx checksum offload). A cookie-mode IPv6
 *      address therefore keeps the retransmit authentication.
 * XXX: the SYN's checksums are not verified before answering (a bad-checksum SYN gets a
 *      SYN-ACK; the client's stack ignores it). IPv4 options and IPv6 extension headers of the
 *      SYN are not echoed: the SYN-ACK is built without them. VLAN tags are kept.
 */
#ifndef XDPGUARD_SYNCOOKIE_H
#define XDPGUARD_SYNCOOKIE_H

#include "common.h"
#include "maps.h"

#define XG_SC_MSS4 1460
#define XG_SC_MSS6 1440
#define XG_SC_TTL 64
#define XG_SC_TCP_BUF 64             /* the SYN's TCP header with options (<= 60) */
#ifndef XG_SC_BUDGET_PPS
/* Cookie answers per protected address and second above its threshold, at most: past them a
 * SYN of a source that is not verified is dropped (`syn`, it retransmits). Answering costs
 * ~6x a drop and sends a packet per SYN: a flood far above this must not eat the protector
 * (or the uplink). Not applied with XG_PROT_SYN_ALWAYS (no per-second count is kept).
 * XXX: first come in each second: once a flood has spent it, every unknown SYN of the rest of
 *      that second is dropped; admitting a sampled share (1 in N) would spread it. */
#define XG_SC_BUDGET_PPS 20000
#endif

#ifndef XG_SYNCOOKIE_IPV6
#define XG_SYNCOOKIE_IPV6 0
#endif

struct xg_sc_synack4 {
    struct iphdr ip;
    struct tcphdr tcp;
    __be32 mss_opt;
};

struct xg_sc_synack6 {
    struct ipv6hdr ip;
    struct tcphdr tcp;
    __be32 mss_opt;
};

/* Is the address's SYN defence configured in cookie mode (at any current rate)? */
static __always_inline int xg_cookie_mode(struct xg_protected *prot)
{
    return (prot->flags & XG_PROT_SYN_COOKIE) &&
           (prot->syn.syn_threshold_pps || (prot->flags & XG_PROT_SYN_ALWAYS));
}

/* Are SYN cookies used for this packet's family (IPv6: see XG_SYNCOOKIE_IPV6)? */
static __always_inline int xg_cookie_family(struct xg_pkt *p)
{
    return p->src.family == 4 || XG_SYNCOOKIE_IPV6;
}

static __always_inline struct xg_cookie_stats *xg_cookie_stats(void)
{
    __u32 zero = 0;
    return xg_cookie_pcpu.lookup(&zero);
}

/* Step 12b, cookie mode: answer this SYN (or, with the reason monitored, let it pass as
 * would_drop: monitor mode has no side effects, so nothing is sent). */
static __always_inline __u32 syncookie_answer(struct xg_config *cfg)
{
    return (cfg->monitor_mask & (1ULL << XG_REASON_SYNCOOKIE)) ? XG_REASON_SYNCOOKIE : XG_SYNCOOKIE_TX;
}

static __always_inline __u32 xg_csum_words(__u32 sum, const void *buf, int words)
{
    const __u16 *w = buf;
#pragma unroll
    for (int i = 0; i < words; i++)
        sum += w[i];
    return sum;
}

static __always_inline __u16 xg_csum_fold(__u32 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

/* The TCP header of a non-SYN packet (20 bytes) for the cookie check; -1: cannot read it. */
static __always_inline int xg_sc_load_tcp(struct xdp_md *ctx, struct xg_pkt *p, struct tcphdr *th)
{
    return bpf_xdp_load_bytes(ctx, p->l4_off, th, sizeof(*th)) ? -1 : 0;
}

/* Step 9c: an ACK that belongs to no recorded connection (step_tcpstate said TCPSTATE) passes
 * when it completes one of our cookie handshakes; else it stays a `tcpstate` drop (a spoofed
 * ACK: ACK floods keep their reason whatever the SYN mode), counted in xg_cookie_pcpu.ack_bad. */
static __always_inline __u32 step_syncookie(struct xdp_md *ctx, struct xg_protected *prot, struct xg_pkt *p)
{
    if (!xg_cookie_mode(prot) || !xg_cookie_family(p) ||
        (p->tcp_flags & (XG_TCP_SYN | XG_TCP_RST | XG_TCP_FIN | XG_TCP_ACK)) != XG_TCP_ACK)
        return XG_REASON_TCPSTATE;
    struct tcphdr th;
    long bad = -1;
    if (xg_sc_load_tcp(ctx, p, &th) == 0) {
        if (p->src.family == 4) {
            struct iphdr ip;
            if (bpf_xdp_load_bytes(ctx, p->l3_off, &ip, sizeof(ip)) == 0)
                bad = bpf_tcp_raw_check_syncookie_ipv4(&ip, &th);
        } else {
            struct ipv6hdr ip6;
            if (bpf_xdp_load_bytes(ctx, p->l3_off, &ip6, sizeof(ip6)) == 0)
                bad = bpf_tcp_raw_check_syncookie_ipv6(&ip6, &th);
        }
    }
    struct xg_cookie_stats *st = xg_cookie_stats();
    if (st) {
        if (bad)
            st->ack_bad += 1;
        else
            st->ack_valid += 1;
    }
    return bad ? XG_REASON_TCPSTATE : XG_CONTINUE;  /* a bad cookie: the ACK flood it is (ack_bad counts it) */
}

/* Read the SYN's TCP header with its options into th (XG_SC_TCP_BUF bytes); its length, or 0. */
static __always_inline __u32 xg_sc_load_syn(struct xdp_md *ctx, struct xg_pkt *p, __u8 *th)
{
    if (bpf_xdp_load_bytes(ctx, p->l4_off, th, sizeof(struct tcphdr)))
        return 0;
    __u32 doff = (th[12] >> 4) * 4;
    if (doff < sizeof(struct tcphdr))
        return 0;
    /* bpf_xdp_load_bytes and the cookie helper take a length the verifier must bound away from
     * 0; as in filter_payload (steps/feature.h) it goes through a volatile slot and comes back as
     * ((len - 1) & 63) + 1, equal to doff (20..60). */
    volatile __u32 len_m1 = doff - 1;
    __u32 len = (len_m1 & (XG_SC_TCP_BUF - 1)) + 1;
    if (bpf_xdp_load_bytes(ctx, p->l4_off, th, len))
        return 0;
    return len;
}

/* Fill the TCP part of a SYN-ACK answering syn (as received) with cookie and mss. */
static __always_inline void xg_sc_tcp(struct tcphdr *out, __be32 *mss_opt, struct tcphdr *syn, __u32 cookie,
                                      __u16 mss)
{
    out->source = syn->dest;
    out->dest = syn->source;
    out->seq = bpf_htonl(cookie);
    out->ack_seq = bpf_htonl(bpf_ntohl(syn->seq) + 1);
    ((__u8 *)out)[12] = 6 << 4;                        /* doff 6: the header and the MSS option */
    ((__u8 *)out)[13] = XG_TCP_SYN | XG_TCP_ACK;
    out->window = 0;                                   /* no data before synproxy's window update */
    out->check = 0;
    out->urg_ptr = 0;
    *mss_opt = bpf_htonl((2 << 24) | (4 << 16) | mss); /* kind 2 (MSS), length 4 */
}

/* Swap the Ethernet addresses in place (bytes 0..11); -1 on failure. */
static __always_inline int xg_sc_swap_eth(struct xdp_md *ctx)
{
    __u8 mac[12];
    __u8 sw[12];
    if (bpf_xdp_load_bytes(ctx, 0, mac, sizeof(mac)))
        return -1;
    __builtin_memcpy(sw, mac + 6, 6);
    __builtin_memcpy(sw + 6, mac, 6);
    return bpf_xdp_store_bytes(ctx, 0, sw, sizeof(sw)) ? -1 : 0;
}

/* Turn the frame (p->len bytes, as parsed) into new_len bytes. */
static __always_inline int xg_sc_resize(struct xdp_md *ctx, struct xg_pkt *p, __u32 new_len)
{
    return bpf_xdp_adjust_tail(ctx, (int)new_len - (int)p->len) ? -1 : 0;
}

static __always_inline int syncookie_reply4(struct xdp_md *ctx, struct xg_pkt *p)
{
    __u8 th[XG_SC_TCP_BUF] = {};
    struct xg_sc_synack4 out = {};
    __u32 len = xg_sc_load_syn(ctx, p, th);
    if (!len || bpf_xdp_load_bytes(ctx, p->l3_off, &out.ip, sizeof(out.ip)))
        return -1;
    __s64 v = bpf_tcp_raw_gen_syncookie_ipv4(&out.ip, (struct tcphdr *)th, len);
    if (v < 0)
        return -1;
    __u16 mss = v >> 32;
    if (mss > XG_SC_MSS4)
        mss = XG_SC_MSS4;
    __be32 client = out.ip.saddr;
    out.ip.saddr = out.ip.daddr;
    out.ip.daddr = client;
    ((__u8 *)&out.ip)[0] = 0x45;
    out.ip.tos = 0;
    out.ip.tot_len = bpf_htons(sizeof(out));
    out.ip.id = 0;
    out.ip.frag_off = bpf_htons(0x4000);               /* DF */
    out.ip.ttl = XG_SC_TTL;
    out.ip.protocol = IPPROTO_TCP;
    out.ip.check = 0;
    xg_sc_tcp(&out.tcp, &out.mss_opt, (struct tcphdr *)th, (__u32)v, mss);
    out.ip.check = xg_csum_fold(xg_csum_words(0, &out.ip, sizeof(out.ip) / 2));
    __u32 sum = xg_csum_words(0, &out.ip.saddr, 4);     /* pseudo header: saddr, daddr */
    sum += bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(out.tcp) + sizeof(out.mss_opt));
    sum = xg_csum_words(sum, &out.tcp, (sizeof(out.tcp) + sizeof(out.mss_opt)) / 2);
    out.tcp.check = xg_csum_fold(sum);
    __u32 l3 = p->l3_off;
    if (xg_sc_swap_eth(ctx) || xg_sc_resize(ctx, p, l3 + sizeof(out)))
        return -1;
    return bpf_xdp_store_bytes(ctx, l3, &out, sizeof(out)) ? -1 : 0;
}

static __always_inline int syncookie_reply6(struct xdp_md *ctx, struct xg_pkt *p)
{
    __u8 th[XG_SC_TCP_BUF] = {};
    struct xg_sc_synack6 out = {};
    __u32 len = xg_sc_load_syn(ctx, p, th);
    if (!len || bpf_xdp_load_bytes(ctx, p->l3_off, &out.ip, sizeof(out.ip)))
        return -1;
    __s64 v = bpf_tcp_raw_gen_syncookie_ipv6(&out.ip, (struct tcphdr *)th, len);
    if (v < 0)
        return -1;
    __u16 mss = v >> 32;
    if (mss > XG_SC_MSS6)
        mss = XG_SC_MSS6;
    struct in6_addr client = out.ip.saddr;
    out.ip.saddr = out.ip.daddr;
    out.ip.daddr = client;
    *(__be32 *)&out.ip = bpf_htonl(0x60000000);         /* version 6, no traffic class or flow label */
    out.ip.payload_len = bpf_htons(sizeof(out.tcp) + sizeof(out.mss_opt));
    out.ip.nexthdr = IPPROTO_TCP;
    out.ip.hop_limit = XG_SC_TTL;
    xg_sc_tcp(&out.tcp, &out.mss_opt, (struct tcphdr *)th, (__u32)v, mss);
    __u32 sum = xg_csum_words(0, &out.ip.saddr, 16);    /* pseudo header: saddr, daddr, length, proto */
    sum += bpf_htons(sizeof(out.tcp) + sizeof(out.mss_opt)) + bpf_htons(IPPROTO_TCP);
    sum = xg_csum_words(sum, &out.tcp, (sizeof(out.tcp) + sizeof(out.mss_opt)) / 2);
    out.tcp.check = xg_csum_fold(sum);
    __u32 l3 = p->l3_off;
    if (xg_sc_swap_eth(ctx) || xg_sc_resize(ctx, p, l3 + sizeof(out)))
        return -1;
    return bpf_xdp_store_bytes(ctx, l3, &out, sizeof(out)) ? -1 : 0;
}

/* After the verdict was counted (the sample holds the SYN as received): rewrite the SYN into
 * its cookie SYN-ACK and send it back (XDP_TX), or drop it when that cannot be done. */
static __always_inline int syncookie_reply(struct xdp_md *ctx, struct xg_pkt *p)
{
    int err = p->src.family == 4 ? syncookie_reply4(ctx, p) : syncookie_reply6(ctx, p);
    struct xg_cookie_stats *st = xg_cookie_stats();
    if (st) {
        if (err)
            st->failed += 1;
        else
            st->synack_sent += 1;
    }
    return err ? XDP_DROP : XDP_TX;
}

#endif /* XDPGUARD_SYNCOOKIE_H */
