"""Workload image checks before pods fail (issue 22): pure inventory and the controller."""
