"""The per-job job manager: one StreamingJob's control plane in a pod of its own."""
