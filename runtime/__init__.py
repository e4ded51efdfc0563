"""What every stage process shares at runtime: its lifecycle, health and metrics, storage."""
