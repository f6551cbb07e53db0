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

/* Parse and check the L4 header of a protected packet; -1 means malformed/truncated.
 * For TCP and UDP the destination port (host order) is returned, else 0. */
static __always_inline int check_l4(struct xg_cursor *c, void *data_end, int l4proto)
{
    struct tcphdr *tcph;
    struct udphdr *udph;
    struct xg_icmp_prefix *icmph;

    switch (l4proto) {
    case IPPROTO_TCP:
        return parse_tcphdr(c, data_end, &tcph) < 0 ? -1 : bpf_ntohs(tcph->dest);
    case IPPROTO_UDP:
        return parse_udphdr(c, data_end, &udph) < 0 ? -1 : bpf_ntohs(udph->dest);
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
        return parse_icmp(c, data_end, &icmph) < 0 ? -1 : 0;
    default:
        return 0;
    }
}

/* Port policy: with XG_PROT_PORT_POLICY on the protected address, TCP/UDP must go to an open
 * port. Returns 1 when the packet may pass this step. */
static __always_inline int port_open(struct xg_protected *prot, struct xg_port_key *pk,
                                     int l4proto, int dport)
{
    if (!(prot->flags & XG_PROT_PORT_POLICY))
        return 1;
    if (l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP)
        return 1;
    pk->port = dport;
    pk->proto = l4proto;
    return xg_ports_hash.lookup(pk) != 0;
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
        struct xg_protected *prot = xg_prot4_hash.lookup(&daddr);
        if (!prot)
            goto out;

        struct xg_lpm4_key k4 = { .prefixlen = 32, .addr = iph->saddr };
        if (list4_hit(XG_LIST_ALLOW, cfg->lists_mask, &k4)) {
            reason = XG_REASON_ALLOWLIST;
            goto out;
        }
        if (list4_hit(XG_LIST_BLOCK, cfg->lists_mask, &k4)) {
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
        /* Non-first fragments carry no L4 header to check. XXX: the fragment policy step
         * (issue: cleansing) decides about them; today they pass as clean. */
        if (!(iph->frag_off & bpf_htons(XG_IP_OFFSET))) {
            int dport = check_l4(&c, data_end, l4proto);
            if (dport < 0) {
                action = XDP_DROP;
                reason = XG_REASON_MALFORMED;
                goto out;
            }
            struct xg_port_key pk = { .family = 4 };
            __builtin_memcpy(pk.addr, &daddr, 4);
            if (!port_open(prot, &pk, l4proto, dport)) {
                action = XDP_DROP;
                reason = XG_REASON_PORT;
                goto out;
            }
        }
        reason = XG_REASON_CLEAN;
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6h;
        int l4proto = parse_ip6hdr(&c, data_end, &ip6h);
        if (l4proto < 0)
            goto out;
        struct xg_addr6 d6;
        __builtin_memcpy(d6.addr, ip6h->daddr.s6_addr, 16);
        struct xg_protected *prot = xg_prot6_hash.lookup(&d6);
        if (!prot)
            goto out;

        struct xg_lpm6_key k6 = { .prefixlen = 128 };
        __builtin_memcpy(k6.addr, ip6h->saddr.s6_addr, 16);
        if (list6_hit(XG_LIST_ALLOW, cfg->lists_mask, &k6)) {
            reason = XG_REASON_ALLOWLIST;
            goto out;
        }
        if (list6_hit(XG_LIST_BLOCK, cfg->lists_mask, &k6)) {
            action = XDP_DROP;
            reason = XG_REASON_BLOCKLIST;
            goto out;
        }
        int dport = ip6h->version == 6 ? check_l4(&c, data_end, l4proto) : -1;
        if (dport < 0) {
            action = XDP_DROP;
            reason = XG_REASON_MALFORMED;
            goto out;
        }
        struct xg_port_key pk = { .family = 6 };
        __builtin_memcpy(pk.addr, d6.addr, 16);
        if (!port_open(prot, &pk, l4proto, dport)) {
            action = XDP_DROP;
            reason = XG_REASON_PORT;
            goto out;
        }
        reason = XG_REASON_CLEAN;
    }

out:
    return record_verdict(ctx, cfg, action, reason);
}
