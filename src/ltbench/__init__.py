"""ltbench: long-tailed recognition, run and compared honestly."""
