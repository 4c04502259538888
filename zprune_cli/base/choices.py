"""The names a recipe's choice fields take, listed once: settings (grid checks), recipe (normalising), the
CLI (bare flags, help) and the grid all read them here."""

SCOPES = ("row", "layer")
RECONSTRUCTIONS = ("none", "obs", "pcg")  # obs: SparseGPT's update, what a bare --reconstruct means
REFINEMENTS = ("none", "swaps")  # swaps[:ROUNDS]
