"""Hugging Face safetensors checkpoints: reading, writing, converting, verifying."""
