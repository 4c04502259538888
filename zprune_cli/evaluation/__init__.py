"""Evaluation of a (pruned) model.

- `zprune_cli.evaluation.perplexity`: `eval_windows`, `perplexity` -> `PerplexityResult` (the papers' protocol).
- `zprune_cli.evaluation.zeroshot`: `zeroshot` through lm-eval on the in-memory model; `shipped_tasks`.
- `zprune_cli.evaluation.efficiency`: `measure_sparsity`, `count_parameters`, `size_on_disk`, `throughput`,
  `semi_structured_speedup`.

Import from the submodules: the functions `perplexity` and `zeroshot` share their modules' names, and
re-exporting them here would shadow the modules.
"""
