/* xg_watermark.c — see xg_watermark.h. */
#include "xg_watermark.h"

#include <string.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                    \
    do {                                                            \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);   \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                      \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                      \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);   \
    } while (0)

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void xg_siphash24(const uint8_t key[XG_WM_KEY_LEN], const uint8_t *msg, size_t len, uint8_t out[8])
{
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = le64(msg + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)(len & 0xff) << 56;
    for (size_t i = 0; i < len % 8; i++)
        b |= (uint64_t)msg[whole + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    uint64_t h = v0 ^ v1 ^ v2 ^ v3;
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(h >> (8 * i));
}

size_t xg_wm_mark(const uint8_t key[XG_WM_KEY_LEN], const uint8_t *data, size_t len, uint16_t port,
                  uint32_t step, uint32_t window, uint64_t unix_s, uint8_t *out)
{
    uint8_t m[8 + XG_WM_WINDOW_MAX] = {0};
    if (step < 1 || window > XG_WM_WINDOW_MAX || window % 8 || len > 65535 - 8 - XG_WM_TAG_LEN)
        return 0;
    uint32_t ep = (uint32_t)(unix_s / step);
    m[0] = ep >> 24; m[1] = ep >> 16; m[2] = ep >> 8; m[3] = ep;
    m[4] = len >> 8; m[5] = len; m[6] = port >> 8; m[7] = port;
    memcpy(m + 8, data, len < window ? len : window);
    if (out != data)
        memmove(out, data, len);
    memcpy(out + len, m, 4);
    xg_siphash24(key, m, 8 + window, out + len + 4);
    return len + XG_WM_TAG_LEN;
}
