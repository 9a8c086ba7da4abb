"""flowstate: typed, scoped, concurrency-safe state for AI and automation flows."""
