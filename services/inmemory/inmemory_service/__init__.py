"""The in-memory service: producers and consumers in one process over a bounded queue."""
