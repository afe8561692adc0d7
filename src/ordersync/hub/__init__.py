"""The hub: the order platform server (one domain and store behind three wire dialects)."""

# Here rather than in settings.py, so that the CLI can show it without importing the server.
DEFAULT_DB_URL = "sqlite:///ordersync-hub.db"
