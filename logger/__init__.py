"""wanctl logger."""
