"""molmofleet fleet."""
