"""molmofleet learner: continual fine-tuning of MolmoAct2 on the fleet's episodes.

continual.Learner (the loop) <- mixture.MixtureSampler (what each batch holds) + engine.TrainingEngine
(DeepSpeed) -> publish.WeightSink (versions) + tracking.Tracker (MLflow); bootstrap.open_policy (where training
starts); lerobot_io (LeRobot v3 datasets in and out, through lerobot_compat on this torch).
"""
