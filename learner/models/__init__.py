"""Model construction and loading (Hugging Face causal LMs, MoE first)."""
