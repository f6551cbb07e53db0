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
