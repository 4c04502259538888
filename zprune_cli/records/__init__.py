"""What a run leaves behind, as typed values: evaluation protocols, result rows, intervals and ranking,
leaderboard cells, the provenance of a pruned folder. Reads a record without the method registry."""
