"""contextpool-hf: ContextPool for Hugging Face Transformers."""
