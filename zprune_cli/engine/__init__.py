"""From a recipe to pruned weights: the normalised recipe, OWL's per-block targets and the block-by-block
pipeline."""
