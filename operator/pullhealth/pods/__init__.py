"""Failing pods: the pod stream, kubelet's Events, the per-pod memo, the diagnosis and its handlers."""
