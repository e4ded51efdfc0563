"""The RouterOS API link every stage that talks to the router shares: one bounded, backed-off connection."""
