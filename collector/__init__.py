"""wanctl collector."""
