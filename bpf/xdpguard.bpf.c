/* xdpguard.bpf.c — the XDP entry point: wires the decision pipeline of DESIGN.md.
 *
 * Every path ends at `out:` → record_verdict(). Pass reasons: bypass (not ours), clean,
 * allowlist. Drop reasons: see abi.h. Headers below hold the parsing, maps and steps.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "abi.h"
#include "parsing.h"
#include "maps.h"
#include "stats.h"
#include "lists.h"

#define XG_IP_MF     0x2000
#define XG_IP_OFFSET 0x1FFF

/* Parse and check the L4 header of a protected packet; -1 means malformed/truncated. */
static __always_inline int check_l4(struct xg_cursor *c, void *data_end, int l4proto)
{
    struct tcphdr *tcph;
    struct udphdr *udph;
    struct xg_icmp_prefix *icmph;

    switch (l4proto) {
    case IPPROTO_TCP:
        return parse_tcphdr(c, data_end, &tcph) < 0 ? -1 : 0;
    case IPPROTO_UDP:
        return parse_udphdr(c, data_end, &udph) < 0 ? -1 : 0;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
        return parse_icmp(c, data_end, &icmph) < 0 ? -1 : 0;
    default:
        return 0;
    }
}

int xdpguard_main(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct xg_cursor c = { .pos = data };
    int action = XDP_PASS;
    __u32 reason = XG_REASON_BYPASS;
    __u32 zero = 0;
    struct ethhdr *eth;

    struct xg_config *cfg = xg_config_arr.lookup(&zero);
    if (!cfg || !(cfg->flags & XG_CFG_ENABLED))
        goto out;

    int proto = parse_ethhdr(&c, data_end, &eth);

    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *iph = c.pos;
        /* The fixed header holds both addresses; without it the packet is not ours to judge. */
        if ((void *)(iph + 1) > data_end)
            goto out;
        __u32 daddr = iph->daddr;
        if (!xg_prot4_hash.lookup(&daddr))
            goto out;

        struct xg_lpm4_key k4 = { .prefixlen = 32, .addr = iph->saddr };
        if (xg_entry_live(xg_allow4_lpm.lookup(&k4))) {
            reason = XG_REASON_ALLOWLIST;
            goto out;
        }
        if (xg_entry_live(xg_block4_lpm.lookup(&k4))) {
            action = XDP_DROP;
            reason = XG_REASON_BLOCKLIST;
            goto out;
        }

        int l4proto = parse_iphdr(&c, data_end, &iph);
        if (l4proto < 0 || iph->version != 4 || bpf_ntohs(iph->tot_len) < iph->ihl * 4) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
        /* Non-first fragments carry no L4 header to check. */
        if (!(iph->frag_off & bpf_htons(XG_IP_OFFSET)) && check_l4(&c, data_end, l4proto) < 0) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
        reason = XG_REASON_CLEAN;
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6h;
        int l4proto = parse_ip6hdr(&c, data_end, &ip6h);
        if (l4proto < 0)
            goto out;
        struct xg_addr6 d6;
        __builtin_memcpy(d6.addr, ip6h->daddr.s6_addr, 16);
        if (!xg_prot6_hash.lookup(&d6))
            goto out;

        struct xg_lpm6_key k6 = { .prefixlen = 128 };
        __builtin_memcpy(k6.addr, ip6h->saddr.s6_addr, 16);
        if (xg_entry_live(xg_allow6_lpm.lookup(&k6))) {
            reason = XG_REASON_ALLOWLIST;
            goto out;
        }
        if (xg_entry_live(xg_block6_lpm.lookup(&k6))) {
            action = XDP_DROP;
            reason = XG_REASON_BLOCKLIST;
            goto out;
        }
        if (ip6h->version != 6 || check_l4(&c, data_end, l4proto) < 0) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
        reason = XG_REASON_CLEAN;
    }

out:
    return record_verdict(ctx, cfg, action, reason);
}
