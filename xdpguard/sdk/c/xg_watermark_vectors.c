/* A test driver: `siphash KEYHEX MSGHEX` or `mark KEYHEX PORT STEP WINDOW UNIX_S DATAHEX`
 * prints the result in hex (tests/unit/test_watermark_c.py feeds it the shared vectors). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xg_watermark.h"

static size_t unhex(const char *s, uint8_t *out, size_t max)
{
    size_t n = strlen(s) / 2;
    if (n > max)
        exit(2);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            exit(2);
        out[i] = (uint8_t)v;
    }
    return n;
}

static void hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

int main(int argc, char **argv)
{
    static uint8_t key[16], msg[70000], out[70000];
    if (argc == 4 && !strcmp(argv[1], "siphash")) {
        unhex(argv[2], key, 16);
        size_t n = unhex(argv[3], msg, sizeof(msg));
        xg_siphash24(key, msg, n, out);
        hex(out, 8);
        return 0;
    }
    if (argc == 8 && !strcmp(argv[1], "mark")) {
        unhex(argv[2], key, 16);
        size_t n = unhex(argv[7], msg, 65515);
        size_t m = xg_wm_mark(key, msg, n, (uint16_t)atoi(argv[3]), (uint32_t)atoi(argv[4]),
                              (uint32_t)atoi(argv[5]), strtoull(argv[6], NULL, 10), out);
        if (!m)
            return 1;
        hex(out, m);
        return 0;
    }
    return 2;
}
