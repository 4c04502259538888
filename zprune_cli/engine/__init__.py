"""From a recipe to pruned weights: the normalised recipe, OWL's per-block targets, the channel permutation
applied to a model's blocks (`permuted`) and the block-by-block pipeline."""
