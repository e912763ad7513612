"""The contrastive (CLIP-style) image-text training task (registered in registry.TASKS)."""
