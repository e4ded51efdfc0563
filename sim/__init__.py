"""wanctl sim."""
