"""The activation-statistics store: collecting per-layer statistics block by block, and storing them once per
key."""
