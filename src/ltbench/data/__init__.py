"""Data: sources read into memory, long-tailed splits, epoch samplers and batched augmentation."""
