"""Guard: host-side validation (and, later, sanitization) of everything leaving a sandbox."""
