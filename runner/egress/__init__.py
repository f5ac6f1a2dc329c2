"""The egress proxy: runs in its own container, the only way out of a networked sandbox."""
