"""The vocabulary every wanctl stage shares: messages, configuration, names."""
