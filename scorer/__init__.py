"""wanctl scorer."""
