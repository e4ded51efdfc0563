"""``wanctl-report``: what the decisions in a logger file say about a period."""
