"""On-disk layouts of weights and masks (codecs and the reader), below every other module but errors.

bits      bit packing shared by the layouts
hf        dense safetensors as transformers writes them
sparse    non-zero values + packed bitmask per pruned weight (zprune's own layout)
sparse24  the legacy compressed-tensors sparse-24-bitmask layout
masks     bit-packed prune masks only
reader    WeightReader: dense tensors back from any of them
"""
