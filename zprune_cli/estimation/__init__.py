"""The dry run: a model's shapes from its config alone (meta device), and what a command will need of memory,
disk, passes and time."""
