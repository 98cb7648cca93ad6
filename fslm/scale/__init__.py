"""Running fslm's batch verbs on more than one process: `ray.py` fans batches out over a Ray cluster."""
