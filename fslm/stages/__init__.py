"""The stack's stages: the graph (`graph`, pure, shared by the config validator and the scheduler), the YAML blocks
inside a stage (`blocks`), what a stage is given (`inputs`), what each kind does (`retrieve`, `score`, `tool`) and
the trace types (`records`). `fslm.stack.Stack` schedules them."""
