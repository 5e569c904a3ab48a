"""ragraft terminal UI (Textual)."""
