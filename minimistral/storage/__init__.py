"""Writing without loss: checkpoints saved by a journalled swap (checkpoints.py) and atomic file writes under a
folder lock (atomic.py). Nothing a user has is overwritten until its replacement is complete on disk."""
