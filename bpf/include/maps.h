/* maps.h — every map of the XDP program, in bcc's dialect; layouts live in abi.h.
 *
 * Every map is declared through XG_MAP. With XG_PIN_DIR defined (a string: the interface's pin
 * directory) bcc opens the map pinned there instead of creating one, and creates and pins it
 * when there is none: a new program version then runs on the very maps of the old one (lists,
 * hit counters, bans, buckets, SYN state, counters), and is swapped in atomically. bcc checks
 * neither sizes nor types of a reused map: the controller checks every layout and the ABI
 * version before it compiles against pins (dataplane.upgrade).
 */
#ifndef XDPGUARD_MAPS_H
#define XDPGUARD_MAPS_H

#include "abi.h"

#ifdef XG_PIN_DIR
#define XG_PINNED(name) ":" XG_PIN_DIR "/" #name
#else
#define XG_PINNED(name) ""
#endif
#define XG_MAP(type, key, val, name, max, flags) BPF_F_TABLE(type XG_PINNED(name), key, val, name, max, flags)

/* xg_config_arr: key 0 → struct xg_config (run-time switches, monitor mask). */
XG_MAP("array", int, struct xg_config, xg_config_arr, 1, 0);

/* xg_stats_pcpu: key kind*XG_REASON_MAX+reason → per-CPU packets and bytes. */
XG_MAP("percpu_array", int, struct xg_counter, xg_stats_pcpu, XG_STATS_SLOTS, 0);

/* xg_prot4_hash / xg_prot6_hash: protected destination address → struct xg_protected. */
XG_MAP("hash", __u32, struct xg_protected, xg_prot4_hash, XG_PROTECTED_MAX, 0);
XG_MAP("hash", struct xg_addr6, struct xg_protected, xg_prot6_hash, XG_PROTECTED_MAX, 0);

/* xg_ports_hash: (protected address, proto, port) → struct xg_port_value, the service record of
 * an open port or a port with limits of its own (port policy, limits, destination bucket). */
XG_MAP("hash", struct xg_port_key, struct xg_port_value, xg_ports_hash, XG_PORTS_MAX, 0);

/* xg_svc_arr: service record slot (xg_port_value.slot) → struct xg_svc (limits, bucket). */
XG_MAP("array", int, struct xg_svc, xg_svc_arr, XG_PORTS_MAX, 0);

/* xg_portlim_hash: (protected address, proto, port) → struct xg_limits overriding the address's:
 * the controller's record of the per-port limits; the data path reads their copy in xg_svc_arr. */
XG_MAP("hash", struct xg_port_key, struct xg_limits, xg_portlim_hash, XG_PORTS_MAX, 0);

/* xg_bucket_lru: source → struct xg_bucket (token buckets; an evicted source starts full).
 * Per-CPU LRU lists (BPF_F_NO_COMMON_LRU): an insert takes no lock shared by all CPUs. */
XG_MAP("lru_hash", struct xg_src_key, struct xg_bucket, xg_bucket_lru, XG_SOURCES_MAX, BPF_F_NO_COMMON_LRU);

/* xg_srcsk_arr: source hash slot → struct xg_srcsk, the sketch in front of xg_bucket_lru: a
 * source far from every limit passes without a bucket (abi.h, steps/ratelimit.h). */
XG_MAP("array", int, struct xg_srcsk, xg_srcsk_arr, XG_SK_SLOTS, 0);

/* xg_dstbkt_hash: (protected address, proto, port) → struct xg_dst_bucket (all sources); the
 * controller deletes idle ones (policy.sweep_dst_buckets). */
XG_MAP("hash", struct xg_port_key, struct xg_dst_bucket, xg_dstbkt_hash, XG_PORTS_MAX, 0);

/* xg_dstaddr_arr: protected address slot (xg_syn_policy.slot) → struct xg_dst_bucket, shared by
 * the address's ports that find xg_dstbkt_hash full: it always exists, so a full hash never fails
 * closed (nor open), and never for another address. */
XG_MAP("array", int, struct xg_dst_bucket, xg_dstaddr_arr, XG_PROTECTED_MAX, 0);

/* xg_ban_lru: source → struct xg_ban (dynamic bans with expiry, written by the data path). */
XG_MAP("lru_hash", struct xg_src_key, struct xg_ban, xg_ban_lru, XG_BANS_MAX, 0);

/* xg_opban_hash: source → struct xg_ban (operator bans; a hash, so a flood of data-path bans
 * filling xg_ban_lru cannot evict them). */
XG_MAP("hash", struct xg_src_key, struct xg_ban, xg_opban_hash, XG_OPBANS_MAX, BPF_F_NO_PREALLOC);

/* xg_banbloom_arr: word → __u64, XG_BANBLOOM_BITS bits over the banned sources (abi.h). */
XG_MAP("array", int, __u64, xg_banbloom_arr, XG_BANBLOOM_BITS / 64, 0);

/* xg_dpstate_arr: key 0 → struct xg_dpstate (flags the data path sets). */
XG_MAP("array", int, struct xg_dpstate, xg_dpstate_arr, 1, 0);

/* xg_reflect_arr: UDP source port → 1 when traffic from it is treated as reflection. */
XG_MAP("array", int, __u8, xg_reflect_arr, 65536, 0);

/* xg_filters_arr: slot → struct xg_filter, evaluated in order up to config.filters_count. */
XG_MAP("array", int, struct xg_filter, xg_filters_arr, XG_FILTERS_MAX, 0);

/* Feature filters, compiled (abi.h XG_FV_*), two generations: xg_fsel_arr key 0 → struct
 * xg_fsel (the live generation); xg_fhead_arr gen → struct xg_fhead; xg_fvec_arr gen*XG_FV_SLOTS
 * + field + value → __u64 (bit i: filter i accepts the value); xg_fdef_arr gen*XG_FILTERS_MAX + i
 * → struct xg_filter (for the payload compare and the action). xg_filters_arr stays the
 * controller's record of the ordered list; the data path does not read it. */
XG_MAP("array", int, struct xg_fsel, xg_fsel_arr, 1, 0);
XG_MAP("array", int, struct xg_fhead, xg_fhead_arr, XG_FGENS, 0);
XG_MAP("array", int, __u64, xg_fvec_arr, XG_FGENS * XG_FV_SLOTS, 0);
XG_MAP("array", int, struct xg_filter, xg_fdef_arr, XG_FGENS * XG_FILTERS_MAX, 0);

/* The payload index (abi.h XG_PV_*), two generations like the words above: xg_phead_arr gen →
 * struct xg_phead (which filters it decides, the byte positions it reads); xg_pvec_arr
 * gen*XG_PV_SLOTS + position*XG_PV_VALUES + byte value → __u64 (bit i: filter i accepts it). */
XG_MAP("array", int, struct xg_phead, xg_phead_arr, XG_FGENS, 0);
XG_MAP("array", int, __u64, xg_pvec_arr, XG_FGENS * XG_PV_SLOTS, 0);

/* xg_synwin_arr: protected address slot → struct xg_synwin (SYN count in the current second). */
XG_MAP("array", int, struct xg_synwin, xg_synwin_arr, XG_PROTECTED_MAX, 0);

/* xg_synseen_lru: source → struct xg_synseen (first SYN dropped at, ns). */
XG_MAP("lru_hash", struct xg_src_key, struct xg_synseen, xg_synseen_lru, XG_SOURCES_MAX, 0);

/* xg_synauth_lru: source → struct xg_synauth (retransmission-authenticated until, ns; SYNs left).
 * Soft state: a retransmission proves no address, so an LRU that a double-SYN flood churns costs a
 * real client one more retransmission at worst (verified clients skip the step). */
XG_MAP("lru_hash", struct xg_src_key, struct xg_synauth, xg_synauth_lru, XG_SYNAUTH_MAX, BPF_F_NO_COMMON_LRU);

/* xg_cookie_pcpu: key 0 → per-CPU struct xg_cookie_stats (SYN cookie answers and ACK checks). */
XG_MAP("percpu_array", int, struct xg_cookie_stats, xg_cookie_pcpu, 1, 0);

/* xg_goodsrc_hash: source → struct xg_goodsrc, verified clients (knowngood.h). Only the tc
 * egress program inserts or refreshes (what the protected side sends), XDP reads it and writes
 * only the privilege bucket, so a spoofed flood cannot add, refresh or evict; full = no new
 * learning until the controller's sweep (policy.sweep_verified) makes room. */
XG_MAP("hash", struct xg_src_key, struct xg_goodsrc, xg_goodsrc_hash, XG_GOODSRC_MAX, BPF_F_NO_PREALLOC);

/* xg_vbloom_arr: word → __u64, XG_GOODBLOOM_BITS bits over the verified sources (abi.h). */
XG_MAP("array", int, __u64, xg_vbloom_arr, XG_GOODBLOOM_BITS / 64, 0);

/* xg_vcfg_arr: key 0 → struct xg_verify_config (verified-client budgets, UDP peacetime, bans). */
XG_MAP("array", int, struct xg_verify_config, xg_vcfg_arr, 1, 0);

/* xg_udpwin_pcpu: protected address slot → per-CPU struct xg_synwin: UDP packets this CPU saw in
 * its current second (per CPU: counting every UDP packet in one shared line would bounce it
 * between CPUs under a flood), and when it may next write xg_udpflood_arr. */
XG_MAP("percpu_array", int, struct xg_synwin, xg_udpwin_pcpu, XG_PROTECTED_MAX, 0);

/* xg_udpflood_arr: protected address slot → __u64, until when (ns) the address counts as under a
 * UDP flood (no UDP learning: knowngood.h); written at most once a second per CPU. */
XG_MAP("array", int, __u64, xg_udpflood_arr, XG_PROTECTED_MAX, 0);

/* xg_vdrop_pcpu: filter index or XG_FILTERS_MAX + reason → per-CPU struct xg_vdrop: packets of
 * verified sources dropped, or exempted, there ("first, do no harm"; policy.read_verified_drops). */
XG_MAP("percpu_array", int, struct xg_vdrop, xg_vdrop_pcpu, XG_VDROP_SLOTS, 0);

/* xg_flow_lru: struct xg_flow_key → struct xg_flow, connections the protected side has sent on
 * (ACK/data/FIN/RST). Written only by the tc egress program: a spoofed packet cannot insert, so
 * a flood cannot evict. Per-CPU LRU lists (BPF_F_NO_COMMON_LRU): no shared lock on insert. */
XG_MAP("lru_hash", struct xg_flow_key, struct xg_flow, xg_flow_lru, XG_FLOWS_MAX, BPF_F_NO_COMMON_LRU);

/* xg_embryo_lru: struct xg_flow_key → struct xg_flow, half-open connections (the protected side
 * sent a SYN or SYN-ACK). Separate from xg_flow_lru: SYN-ACKs answering a spoofed SYN flood
 * churn this table only, never the established connections. */
XG_MAP("lru_hash", struct xg_flow_key, struct xg_flow, xg_embryo_lru, XG_EMBRYOS_MAX, BPF_F_NO_COMMON_LRU);

/* xg_tcpcfg_arr: key 0 → struct xg_tcpstate_config (grace period, timeouts in s). */
XG_MAP("array", int, struct xg_tcpstate_config, xg_tcpcfg_arr, 1, 0);

/* Allowlist and blocklist, host entries (/32, /128): exact source → struct xg_list_entry.
 * A hash lookup stays flat as the list grows; the trie's depth does not. */
XG_MAP("hash", __u32, struct xg_list_entry, xg_allow4_hash, XG_LIST_MAX, BPF_F_NO_PREALLOC);
XG_MAP("hash", struct xg_addr6, struct xg_list_entry, xg_allow6_hash, XG_LIST_MAX, BPF_F_NO_PREALLOC);
XG_MAP("hash", __u32, struct xg_list_entry, xg_block4_hash, XG_LIST_MAX, BPF_F_NO_PREALLOC);
XG_MAP("hash", struct xg_addr6, struct xg_list_entry, xg_block6_hash, XG_LIST_MAX, BPF_F_NO_PREALLOC);

/* Allowlist and blocklist, other prefixes: source prefix → struct xg_list_entry. */
XG_MAP("lpm_trie", struct xg_lpm4_key, struct xg_list_entry, xg_allow4_lpm, XG_LIST_MAX, BPF_F_NO_PREALLOC);
XG_MAP("lpm_trie", struct xg_lpm6_key, struct xg_list_entry, xg_allow6_lpm, XG_LIST_MAX, BPF_F_NO_PREALLOC);
XG_MAP("lpm_trie", struct xg_lpm4_key, struct xg_list_entry, xg_block4_lpm, XG_LIST_MAX, BPF_F_NO_PREALLOC);
XG_MAP("lpm_trie", struct xg_lpm6_key, struct xg_list_entry, xg_block6_lpm, XG_LIST_MAX, BPF_F_NO_PREALLOC);

/* xg_lpf_arr: word → __u64, the lists' prefilter (abi.h XG_LPF_*): 4 * XG_LPF_WORDS words, one
 * bitmap per (list, family). */
XG_MAP("array", int, __u64, xg_lpf_arr, 4 * XG_LPF_WORDS, 0);

/* Region (geo) blocking (steps/geo.h): xg_geo4_lpm / xg_geo6_lpm: source prefix → __u32 country index;
 * xg_geoset_arr: protected address slot → struct xg_geoset (the countries its rule names). */
XG_MAP("lpm_trie", struct xg_lpm4_key, __u32, xg_geo4_lpm, XG_GEO_MAX, BPF_F_NO_PREALLOC);
XG_MAP("lpm_trie", struct xg_lpm6_key, __u32, xg_geo6_lpm, XG_GEO_MAX, BPF_F_NO_PREALLOC);
XG_MAP("array", int, struct xg_geoset, xg_geoset_arr, XG_PROTECTED_MAX, 0);

/* UDP watermark (watermark.h): xg_wm_hash: (address, UDP, port) → struct xg_wm; xg_wm_pcpu:
 * XG_WM_CNT_* → per-CPU packets. */
XG_MAP("hash", struct xg_port_key, struct xg_wm, xg_wm_hash, XG_WM_MAX, 0);
XG_MAP("percpu_array", int, __u64, xg_wm_pcpu, XG_WM_CNT_MAX, 0);

#endif /* XDPGUARD_MAPS_H */
