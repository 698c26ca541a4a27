"""The operator process: its composition root (``main``), start-up, shared state and leader election."""
