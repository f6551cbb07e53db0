"""The commands: edits of the desired spec (reconcile.edit) and the questions they answer.

- cleansing: cleansing verbs' reads and their results: limits, protocols, reflection, filters, SYN.
- georules: `xdpguard geo`: the geo rules of protected addresses, store first.
- imperative: the imperative verbs (block, allow, port, limit, proto, level, forward, ...): one writer.
- levelset: set and show the protection levels of an interface's addresses.
- verified: `xdpguard verify`: verified clients and the admission budgets.
- watermarkrules: `xdpguard watermark`: watermarked UDP services, store first.
"""
