"""The topic-admin service: `wait`, `ensure`, `reset` and `describe` for the pipeline's topics,
and the operations `redrive` (dead letters back to the jobs topic), `offsets` (move a group's
committed offsets) and `describe --watch`."""
