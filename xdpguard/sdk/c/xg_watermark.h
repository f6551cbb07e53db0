/* xg_watermark.h — the xdpguard UDP watermark, client side, in portable C99 (reference port).
 *
 * Format v1 (the same as xdpguard/sdk/watermark.py, checked against its vectors,
 * xdpguard/sdk/watermark_vectors.json, by tests/unit/test_watermark_c.py):
 *   datagram = data | epoch (4 bytes, big-endian, floor(unix_seconds / step))
 *                   | SipHash-2-4(key, M) (8 bytes, the standard output byte order)
 *   M        = epoch (4, BE) | data length (2, BE) | destination port (2, BE)
 *              | data[:window] zero-padded to window bytes
 */
#ifndef XG_WATERMARK_H
#define XG_WATERMARK_H

#include <stddef.h>
#include <stdint.h>

#define XG_WM_TAG_LEN 12
#define XG_WM_KEY_LEN 16
#define XG_WM_WINDOW_MAX 64

/* SipHash-2-4 of msg[0..len) under a 16-byte key; the 8 output bytes to out. */
void xg_siphash24(const uint8_t key[XG_WM_KEY_LEN], const uint8_t *msg, size_t len, uint8_t out[8]);

/* Append the 12-byte mark of data[0..len) to dst port `port` at unix time `unix_s`: writes
 * len + XG_WM_TAG_LEN bytes to out (out may equal data). step >= 1; window a multiple of 8,
 * 0..64. Returns the datagram's length, or 0 for bad parameters (len > 65515 too). */
size_t xg_wm_mark(const uint8_t key[XG_WM_KEY_LEN], const uint8_t *data, size_t len, uint16_t port,
                  uint32_t step, uint32_t window, uint64_t unix_s, uint8_t *out);

#endif /* XG_WATERMARK_H */
