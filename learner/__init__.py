"""molmofleet learner."""
