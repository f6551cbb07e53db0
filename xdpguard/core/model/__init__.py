"""Pure value types: the desired spec records, policies, forwarding rules, prefixes, the shared
vocabulary of parsers, thresholds, and the reference verdict model. No kernel, no I/O: a module
here imports only other value types (import-linter holds it, see pyproject.toml)."""
