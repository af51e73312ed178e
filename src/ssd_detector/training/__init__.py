"""Training: job inputs, loop, schedule, distribution, checkpoints, metric lines."""
