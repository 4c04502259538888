"""The library's verbs (calibrate, prune, compare, the grid they read, the cache's upkeep): each one loads, runs
the engine and writes records."""
