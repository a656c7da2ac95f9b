"""The topic-admin service: `wait`, `ensure`, `reset` and `describe` for the pipeline's topics."""
