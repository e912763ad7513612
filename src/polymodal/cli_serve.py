"""`polymodal serve` and `polymodal export` (registered on the main app)."""
