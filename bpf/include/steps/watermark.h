/* steps/watermark.h — the UDP watermark: only datagrams that carry a valid keyed mark reach a
 * watermarked service; the mark is stripped before the kernel sees them.
 *
 * The mark is the last XG_WM_TAG_LEN bytes of the UDP payload (format: xdpguard/sdk/watermark.py):
 *   epoch  __be32   floor(unix seconds / step_s) when the client sent it
 *   mac    8 bytes  SipHash-2-4(key, M), the standard output byte order (little-endian u64)
 *   M = epoch (4, BE) | data length (2, BE) | destination port (2, BE) | the first `window`
 *       bytes of the data, zero-padded to `window` — always 8 + window bytes.
 * An epoch older than `skew` epochs, or more than one ahead, is stale: a captured datagram
 * replays for at most (skew + 2) * step_s seconds. During a key rotation the previous key is
 * tried after the current one until prev_until_s.
 *
 * An address without a watermarked port pays the XG_PROT_WATERMARK flag test; a UDP packet to
 * such an address one hash lookup; a watermarked one two helper loads, one SipHash over at most
 * 9 words (a bounded loop), and on success two stores and a tail adjust. The checksum is updated
 * incrementally (RFC 1624), for IPv4 and IPv6 alike (an IPv4 checksum of 0 stays 0).
 * A valid mark passes (`clean`) and skips the later steps, like an allowlisted source.
 * XXX: a mark is not bound to the source, so a captured datagram can be replayed from any
 * address within its lifetime; non-first IP fragments carry no port and are not checked here.
 */
#ifndef XDPGUARD_WATERMARK_H
#define XDPGUARD_WATERMARK_H

#include "common.h"
#include "maps.h"

#define XG_WM_PASSED 0xfffffffe  /* step_watermark: a valid mark, stripped — pass, skip the rest */
#define XG_WM_WORDS (1 + XG_WM_WINDOW_MAX / 8)
_Static_assert(XG_WM_WORDS == 9, "wm_siphash has one XG_WM_WORD block per word, 0..8");

#define XG_ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define XG_SIPROUND                                                           \
    do {                                                                      \
        v0 += v1; v1 = XG_ROTL64(v1, 13); v1 ^= v0; v0 = XG_ROTL64(v0, 32);   \
        v2 += v3; v3 = XG_ROTL64(v3, 16); v3 ^= v2;                           \
        v0 += v3; v3 = XG_ROTL64(v3, 21); v3 ^= v0;                           \
        v2 += v1; v1 = XG_ROTL64(v1, 17); v1 ^= v2; v2 = XG_ROTL64(v2, 32);   \
    } while (0)

/* SipHash-2-4 of nwords little-endian words (a message of nwords * 8 bytes: no tail). */
static __always_inline __u64 wm_siphash(__u64 k0, __u64 k1, const __u64 *m, __u32 nwords)
{
    __u64 v0 = 0x736f6d6570736575ULL ^ k0;
    __u64 v1 = 0x646f72616e646f6dULL ^ k1;
    __u64 v2 = 0x6c7967656e657261ULL ^ k0;
    __u64 v3 = 0x7465646279746573ULL ^ k1;
    /* One block per word, by hand, at constant offsets: as a loop, clang folds its two exits
     * into one computed trip count that 6.1's verifier cannot bound ("invalid read from stack"
     * past m[]), and `#pragma unroll` kept a pointer walk that 6.18 refused too. */
#define XG_WM_WORD(i)               \
    if (nwords > (i)) {             \
        __u64 w = m[(i)];           \
        v3 ^= w;                    \
        XG_SIPROUND;                \
        XG_SIPROUND;                \
        v0 ^= w;                    \
    }
    XG_WM_WORD(0) XG_WM_WORD(1) XG_WM_WORD(2) XG_WM_WORD(3) XG_WM_WORD(4)
    XG_WM_WORD(5) XG_WM_WORD(6) XG_WM_WORD(7) XG_WM_WORD(8)
#undef XG_WM_WORD
    __u64 b = ((__u64)(nwords * 8) & 0xff) << 56;
    v3 ^= b;
    XG_SIPROUND;
    XG_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    XG_SIPROUND;
    XG_SIPROUND;
    XG_SIPROUND;
    XG_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static __always_inline __u16 wm_fold(__u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)s;
}

static __always_inline void wm_count(__u32 slot)
{
    __u64 *c = xg_wm_pcpu.lookup(&slot);
    if (c)
        *c += 1;
}

/* Steps 6a: the watermark of a UDP service. XG_CONTINUE (not watermarked), XG_WM_PASSED (a
 * valid mark, now stripped) or XG_REASON_WATERMARK. */
static __always_inline __u32 step_watermark(struct xdp_md *ctx, struct xg_protected *prot, struct xg_pkt *p)
{
    if (!(prot->flags & XG_PROT_WATERMARK) || p->l4proto != IPPROTO_UDP)
        return XG_CONTINUE;
    if (!p->has_l4)
        return XG_CONTINUE;  /* XXX: a non-first fragment names no port */
    struct xg_wm *w = xg_wm_hash.lookup(&p->dst);
    if (!w)
        return XG_CONTINUE;
    if (p->is_frag) {
        wm_count(XG_WM_CNT_SHORT);  /* the mark is in a later fragment: cannot be checked here */
        return XG_REASON_WATERMARK;
    }

    __u32 l3 = p->l3_off, l4 = p->l4_off;
    __u32 flen = ctx->data_end - ctx->data;
    __be16 uh[4];                    /* sport, dport, len, check */
    __be16 iplen;
    if (bpf_xdp_load_bytes(ctx, l4, uh, sizeof(uh)) < 0 ||
        bpf_xdp_load_bytes(ctx, l3 + (p->dst.family == 4 ? 2 : 4), &iplen, 2) < 0) {
        wm_count(XG_WM_CNT_SHORT);
        return XG_REASON_WATERMARK;
    }
    __u32 ulen = bpf_ntohs(uh[2]);
    __u32 ip_end = l3 + bpf_ntohs(iplen) + (p->dst.family == 4 ? 0 : 40);
    if (ulen < 8 + XG_WM_TAG_LEN || l4 + ulen != ip_end || ip_end > flen) {
        wm_count(XG_WM_CNT_SHORT);
        return XG_REASON_WATERMARK;
    }
    __u32 dlen = ulen - 8 - XG_WM_TAG_LEN;
    __u32 tag_off = l4 + 8 + dlen;
    __u8 tag[XG_WM_TAG_LEN];
    if (bpf_xdp_load_bytes(ctx, tag_off, tag, XG_WM_TAG_LEN) < 0) {
        wm_count(XG_WM_CNT_SHORT);
        return XG_REASON_WATERMARK;
    }

    __u32 ep = ((__u32)tag[0] << 24) | ((__u32)tag[1] << 16) | ((__u32)tag[2] << 8) | tag[3];
    __u64 unix_s = (bpf_ktime_get_ns() + w->clock_off_ns) / ONE_SEC_NS;
    __u32 step = w->step_s ? w->step_s : 1;
    __u64 now_ep = unix_s / step;
    if ((__u64)ep + w->skew < now_ep || (__u64)ep > now_ep + 1) {
        wm_count(XG_WM_CNT_STALE);
        return XG_REASON_WATERMARK;
    }

    __u64 m[XG_WM_WORDS] = {};
    __u8 *mb = (__u8 *)m;
    mb[0] = tag[0];
    mb[1] = tag[1];
    mb[2] = tag[2];
    mb[3] = tag[3];
    mb[4] = dlen >> 8;
    mb[5] = dlen & 0xff;
    mb[6] = p->dport >> 8;
    mb[7] = p->dport & 0xff;
    __u32 win = w->window & (XG_WM_WINDOW_MAX * 2 - 8);  /* a multiple of 8 */
    if (win > XG_WM_WINDOW_MAX)
        win = XG_WM_WINDOW_MAX;
    __u32 n = dlen < win ? dlen : win;
    /* The size as 1..64 in a form 6.1's verifier bounds too: it does not carry `n - 1 <= 63`
     * back to n ("invalid zero-sized read"), and clang, which knows 1 <= n <= 64, would fold the
     * mask away without the barrier. */
    __u64 nsz = n;
    asm volatile("" : "+r"(nsz));
    nsz = ((nsz - 1) & (XG_WM_WINDOW_MAX - 1)) + 1;
    if (n > 0 && bpf_xdp_load_bytes(ctx, l4 + 8, &m[1], nsz) < 0) {
        wm_count(XG_WM_CNT_SHORT);
        return XG_REASON_WATERMARK;
    }
    __u64 mac;
    __builtin_memcpy(&mac, &tag[4], 8);
    __u32 words = 1 + win / 8;
    int old = 0;
    if (wm_siphash(w->k0, w->k1, m, words) != mac) {
        if (!w->prev_until_s || unix_s >= w->prev_until_s || wm_siphash(w->pk0, w->pk1, m, words) != mac) {
            wm_count(XG_WM_CNT_BAD);
            return XG_REASON_WATERMARK;
        }
        old = 1;
    }

    /* Strip: IP length (and the IPv4 header checksum), UDP length and checksum, then the tail. */
    __be16 nlen = bpf_htons(ulen - XG_WM_TAG_LEN);
    __u32 s = 0;
#pragma unroll
    for (int i = 0; i < XG_WM_TAG_LEN / 2; i++)
        s += ((__u16)tag[2 * i + 1] << 8) | tag[2 * i];  /* raw 16-bit loads, as the checksum sees them */
    __u16 ts = wm_fold(s);
    if (dlen & 1)
        ts = (ts >> 8) | (ts << 8);  /* the mark started at an odd offset: its bytes sum swapped */
    if (uh[3] || p->dst.family == 6) {
        __u32 acc = (__u16)~uh[3] + 2 * (__u32)(__u16)~uh[2] + 2 * (__u32)nlen + (__u16)~ts;
        __u16 c = ~wm_fold(acc);
        uh[3] = c ? c : 0xffff;
    }
    uh[2] = nlen;
    __be16 niplen = bpf_htons(bpf_ntohs(iplen) - XG_WM_TAG_LEN);
    if (p->dst.family == 4) {
        __be16 ipck;
        if (bpf_xdp_load_bytes(ctx, l3 + 10, &ipck, 2) < 0)
            return XG_REASON_WATERMARK;
        ipck = ~wm_fold((__u16)~ipck + (__u32)(__u16)~iplen + niplen);
        if (bpf_xdp_store_bytes(ctx, l3 + 10, &ipck, 2) < 0)
            return XG_REASON_WATERMARK;
    }
    if (bpf_xdp_store_bytes(ctx, l3 + (p->dst.family == 4 ? 2 : 4), &niplen, 2) < 0 ||
        bpf_xdp_store_bytes(ctx, l4 + 4, &uh[2], 4) < 0 ||
        bpf_xdp_adjust_tail(ctx, (int)tag_off - (int)flen) < 0)
        return XG_REASON_WATERMARK;
    wm_count(old ? XG_WM_CNT_PASS_OLD : XG_WM_CNT_PASS);
    return XG_WM_PASSED;
}

#endif /* XDPGUARD_WATERMARK_H */
