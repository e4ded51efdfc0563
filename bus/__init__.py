"""The message bus: client sockets, the proxy process, CURVE keys, and the tap."""
