"""wanctl actuator."""
