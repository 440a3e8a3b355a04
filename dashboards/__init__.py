"""molmofleet dashboards."""
