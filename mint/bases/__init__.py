"""Bases: Hugging Face causal-LM directories (config, safetensors weights, tokenizer) kept resident.

The modules that need torch (building, converting, loading) are imported by name; this package and its
torch-free modules (safetensors headers, BaseInfo) load without it.
"""
