"""Models: resolving a spec, loading (hub, local, GGUF), finding the prunable blocks and layers, the one block
walk, offload."""
