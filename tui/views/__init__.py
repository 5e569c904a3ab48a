"""The terminal UI's views: one module per screen."""
