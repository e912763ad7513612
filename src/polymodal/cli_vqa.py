"""`polymodal vqa`, `polymodal chat` and `polymodal ablate` commands (registered on the main app)."""
