"""Framework-free building blocks; each operation is one script call."""
