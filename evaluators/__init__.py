"""Honest measurements of what ships: accuracy, artifact size, latency, FLOPs, memory."""
