"""Jobs: the store (the truth), dispatch, queues and the broker seam, recovery."""
