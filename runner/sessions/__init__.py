"""Sessions: lifecycle, quotas, reaping."""
