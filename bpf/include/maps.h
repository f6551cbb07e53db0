/* maps.h — every map of the XDP program, in bcc's dialect; layouts live in abi.h. */
#ifndef XDPGUARD_MAPS_H
#define XDPGUARD_MAPS_H

/* xg_config_arr: key 0 → struct xg_config (run-time switches, monitor mask). */
BPF_ARRAY(xg_config_arr, struct xg_config, 1);

/* xg_stats_pcpu: key kind*XG_REASON_MAX+reason → per-CPU packets and bytes. */
BPF_PERCPU_ARRAY(xg_stats_pcpu, struct xg_counter, XG_STATS_SLOTS);

/* xg_prot4_hash / xg_prot6_hash: protected destination address → struct xg_protected. */
BPF_HASH(xg_prot4_hash, __u32, struct xg_protected, XG_PROTECTED_MAX);
BPF_HASH(xg_prot6_hash, struct xg_addr6, struct xg_protected, XG_PROTECTED_MAX);

/* xg_ports_hash: open (protected address, proto, port) → struct xg_port_value (port policy). */
BPF_HASH(xg_ports_hash, struct xg_port_key, struct xg_port_value, XG_PORTS_MAX);

/* xg_portlim_hash: (protected address, proto, port) → struct xg_limits overriding the address's. */
BPF_HASH(xg_portlim_hash, struct xg_port_key, struct xg_limits, XG_PORTS_MAX);

/* xg_bucket_lru: source → struct xg_bucket (token buckets; an evicted source starts full). */
BPF_TABLE("lru_hash", struct xg_src_key, struct xg_bucket, xg_bucket_lru, XG_SOURCES_MAX);

/* xg_dstbkt_hash: (protected address, proto, port) → struct xg_dst_bucket (all sources). */
BPF_HASH(xg_dstbkt_hash, struct xg_port_key, struct xg_dst_bucket, XG_PORTS_MAX);

/* xg_ban_lru: source → struct xg_ban (dynamic bans with expiry, written by the data path). */
BPF_TABLE("lru_hash", struct xg_src_key, struct xg_ban, xg_ban_lru, XG_BANS_MAX);

/* xg_opban_hash: source → struct xg_ban (operator bans; a hash, so a flood of data-path bans
 * filling xg_ban_lru cannot evict them). */
BPF_F_TABLE("hash", struct xg_src_key, struct xg_ban, xg_opban_hash, XG_OPBANS_MAX, BPF_F_NO_PREALLOC);

/* xg_dpstate_arr: key 0 → struct xg_dpstate (flags the data path sets). */
BPF_ARRAY(xg_dpstate_arr, struct xg_dpstate, 1);

/* xg_reflect_arr: UDP source port → 1 when traffic from it is treated as reflection. */
BPF_ARRAY(xg_reflect_arr, __u8, 65536);

/* xg_filters_arr: slot → struct xg_filter, evaluated in order up to config.filters_count. */
BPF_ARRAY(xg_filters_arr, struct xg_filter, XG_FILTERS_MAX);

/* xg_synwin_arr: protected address slot → struct xg_synwin (SYN count in the current second). */
BPF_ARRAY(xg_synwin_arr, struct xg_synwin, XG_PROTECTED_MAX);

/* xg_synseen_lru: source → struct xg_synseen (first SYN dropped at, ns). */
BPF_TABLE("lru_hash", struct xg_src_key, struct xg_synseen, xg_synseen_lru, XG_SOURCES_MAX);

/* xg_synauth_hash: source → struct xg_synauth (authenticated until, ns). */
BPF_F_TABLE("hash", struct xg_src_key, struct xg_synauth, xg_synauth_hash, XG_SYNAUTH_MAX, BPF_F_NO_PREALLOC);

/* xg_flow_lru: struct xg_flow_key → struct xg_flow, connections the protected side has sent on
 * (ACK/data/FIN/RST). Written only by the tc egress program: a spoofed packet cannot insert, so
 * a flood cannot evict. Per-CPU LRU lists (BPF_F_NO_COMMON_LRU): no shared lock on insert. */
BPF_F_TABLE("lru_hash", struct xg_flow_key, struct xg_flow, xg_flow_lru, XG_FLOWS_MAX, BPF_F_NO_COMMON_LRU);

/* xg_embryo_lru: struct xg_flow_key → struct xg_flow, half-open connections (the protected side
 * sent a SYN or SYN-ACK). Separate from xg_flow_lru: SYN-ACKs answering a spoofed SYN flood
 * churn this table only, never the established connections. */
BPF_F_TABLE("lru_hash", struct xg_flow_key, struct xg_flow, xg_embryo_lru, XG_EMBRYOS_MAX, BPF_F_NO_COMMON_LRU);

/* xg_tcpcfg_arr: key 0 → struct xg_tcpstate_config (grace period, timeouts in s). */
BPF_ARRAY(xg_tcpcfg_arr, struct xg_tcpstate_config, 1);

/* Allowlist and blocklist, host entries (/32, /128): exact source → struct xg_list_entry.
 * A hash lookup stays flat as the list grows; the trie's depth does not. */
BPF_F_TABLE("hash", __u32, struct xg_list_entry, xg_allow4_hash, XG_LIST_MAX, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct xg_addr6, struct xg_list_entry, xg_allow6_hash, XG_LIST_MAX, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", __u32, struct xg_list_entry, xg_block4_hash, XG_LIST_MAX, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct xg_addr6, struct xg_list_entry, xg_block6_hash, XG_LIST_MAX, BPF_F_NO_PREALLOC);

/* Allowlist and blocklist, other prefixes: source prefix → struct xg_list_entry. */
BPF_LPM_TRIE(xg_allow4_lpm, struct xg_lpm4_key, struct xg_list_entry, XG_LIST_MAX);
BPF_LPM_TRIE(xg_allow6_lpm, struct xg_lpm6_key, struct xg_list_entry, XG_LIST_MAX);
BPF_LPM_TRIE(xg_block4_lpm, struct xg_lpm4_key, struct xg_list_entry, XG_LIST_MAX);
BPF_LPM_TRIE(xg_block6_lpm, struct xg_lpm6_key, struct xg_list_entry, XG_LIST_MAX);

#endif /* XDPGUARD_MAPS_H */
