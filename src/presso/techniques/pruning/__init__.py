"""Pruning: importance criteria, masks and schedules, and sparse storage of pruned weights."""
