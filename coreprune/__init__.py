"""coreprune: provable structured pruning with coresets."""
