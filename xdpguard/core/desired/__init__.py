"""The desired spec on disk: load (TOML → model.desired.Desired, every problem as FILE:LINE: FIELD),
dump (Desired → TOML, by tomli-w; `loads(to_toml(d)) == d` is a tested property), diff (what
`apply` would change)."""
