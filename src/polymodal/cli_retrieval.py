"""`polymodal index`, `polymodal retrieve` and `polymodal zeroshot` (registered on the main app)."""
