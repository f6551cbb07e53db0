"""Desired state: a shim for one stop (issue 26). The records moved to model/desired.py (and
model/cluster.py), the loader to desired/load.py, the writer to desired/dump.py, the diff to desired/diff.py;
every old name (`config.loads`, `config.Desired`, `config._IFACE_KEYS`, ...) is re-exported here.
New code imports the new modules."""

from __future__ import annotations

import ipaddress  # noqa: F401  (old attributes of this module: config.ipaddress, config.abi, config.vocab)

from .kernel import abi  # noqa: F401
from . import vocab  # noqa: F401
from .errors import UserError  # noqa: F401
from .prefixes import parse_address, parse_prefix  # noqa: F401
from .model.cluster import (  # noqa: F401
    BgpNeighbor, BgpSpec, ClusterSpec
)
from .model.desired import (  # noqa: F401
    addr_order, AddressSpec, ALL_DROP_MASK, DaemonSpec, Desired, DROP_REASONS, ForwardSpec,
    InterfaceSpec, IPAddress, MODES, norm_filter, norm_interface, norm_port_limits, norm_port_runs,
    PortRun, VERIFY_KEYS
)
from .desired.load import (  # noqa: F401
    _ADDR_KEYS, _address, _bgp, _BGP_KEYS, build_filter, _check_values, _cluster, _CLUSTER_KEYS,
    ConfigError, _connlimit, CONNLIMIT_KEYS, _daemon, _DAEMON_KEYS, DEFAULT_PATH, _dotted, _EVENT_KEYS,
    _events, _filter, _FILTER_KEYS, _forward, _FORWARD_KEYS, _geo, _HEADER, _http, http_services,
    _IFACE_KEYS, _IFNAME_RE, _int_in, _interface, _ip, _KEY, _level_port_limits, _LIMIT_KEYS, _limits,
    load, _Loader, loads, _locate, MAX_DEPTH, _NAME_RE, norm_http, _ports, _prefixes, read_regular,
    _syn, _SYN_KEYS, _thresholds, _verify
)
from .desired.dump import (  # noqa: F401
    _address_data, _bgp_data, _BGP_KEYS_OF, _connlimit_items, _filter_data, _fmt_connlimit, _fmt_num,
    _forward_data, _inline, _interface_data, _limits_data, _limits_toml, _num, _plain, _q, _table_of,
    _thresholds_data, _thresholds_toml, to_data, to_toml, toml_key, verify_data
)
from .desired.diff import (  # noqa: F401
    Change, describe, diff, _fmt_events, _fmt_forward, _fmt_limits, _fmt_syn, _iface_changes,
    _monitor_text, _order, _set_changes
)
