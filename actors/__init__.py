"""molmofleet actors."""
