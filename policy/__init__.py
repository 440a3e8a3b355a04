"""molmofleet policy."""
