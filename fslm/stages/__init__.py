"""The stack's stages: the graph (`graph`, pure, shared by the config validator and the scheduler), the YAML blocks
inside a stage (`blocks`; `kinds_config` for verify, vote, escalate and confidence conditions), what a stage is given
(`inputs`), when it runs (`conditions`), what each kind does (`retrieve`, `score`, `tool`, `verify`, `vote`,
`escalate`) and the trace types (`records`). `fslm.stack.Stack` schedules them."""
