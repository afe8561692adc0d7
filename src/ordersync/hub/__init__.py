"""The hub: the order platform server (one domain and store behind three wire dialects)."""
