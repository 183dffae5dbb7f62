"""Small pieces every package shares: user-facing errors, atomic file writes, environment facts."""
