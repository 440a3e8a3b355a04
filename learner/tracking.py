"""MLflow for the learner: one run per learner lifetime (resumed after a restart), the model registry entry of
every published version, and the aliases rollout moves (``champion``, ``canary``).

Store: ``MlflowConfig.tracking_uri``, or by default a local sqlite file ``<data_dir>/mlflow.db`` with
artifacts under ``<data_dir>/mlflow``; the registry lives in the same store. Everything goes through an
explicit ``MlflowClient`` for that URI: nothing here sets MLflow's process-global tracking URI or active run,
so several trackers (tests, the learner and rollout in one process) do not interfere.

Run contents: params (the learner config, flattened), metrics (loss parts, lr per part, samples/s, the
realised data mixture, data staleness, eval figures), system metrics (MLflow's sampler thread: CPU, memory,
disk, network every ``system_metrics_s``), checkpoints and versions as artifacts.

Registry: registered model ``MlflowConfig.model_name``; fleet version N is one model version whose source is
the run artifact directory ``versions/v00000N`` (weights + manifest) and whose tag ``fleet_version`` is N.
MLflow numbers its model versions itself, so aliases are always resolved through that tag.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleet.config import MlflowConfig

FLEET_VERSION_TAG = "fleet_version"
log = logging.getLogger("molmofleet.learner")


def tracking_uri(cfg: MlflowConfig, data_dir: str | Path) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return f"sqlite:///{Path(data_dir).expanduser().resolve() / 'mlflow.db'}"


def _client(cfg: MlflowConfig, data_dir: str | Path) -> Any:
    from mlflow import MlflowClient

    uri = tracking_uri(cfg, data_dir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"} with MLflow's 6000-character value limit respected."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = (json.dumps(v) if not isinstance(v, str) else v)[:6000]
    return out


class FleetRegistry:
    """The model registry view of published versions: register them, move aliases, resolve aliases.

    Rollout calls ``set_alias(version, "canary")`` / ``set_alias(version, "champion")``.
    """

    def __init__(self, cfg: MlflowConfig, data_dir: str | Path):
        self.cfg = cfg
        self.name = cfg.model_name
        self.client = _client(cfg, data_dir)

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    self.name, description="MolmoAct2 trainable weights published by the molmofleet learner"
                )
            except MlflowException as e:  # another process created it in between
                if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                    raise

    def model_version(self, version: int) -> Any | None:
        """The MLflow ModelVersion registered for fleet version ``version`` (None: not registered)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(
                f"name='{self.name}' and tag.{FLEET_VERSION_TAG}='{int(version)}'"
            )
        except MlflowException:
            return None
        return found[0] if found else None

    def register(
        self, version: int, source: str, run_id: str | None, tags: Mapping[str, Any], description: str = ""
    ) -> Any:
        """Register fleet version ``version`` (idempotent: an existing entry is returned as is)."""
        existing = self.model_version(version)
        if existing is not None:
            return existing
        self._ensure_model()
        all_tags = {FLEET_VERSION_TAG: str(int(version)), **{k: str(v) for k, v in tags.items()}}
        return self.client.create_model_version(
            self.name, source, run_id=run_id, tags=all_tags, description=description
        )

    def set_alias(self, version: int, alias: str) -> bool:
        """Point ``alias`` (e.g. champion, canary) at fleet version ``version``.

        Returns False (and logs) when that version was never registered, e.g. published before MLflow was
        configured: a rollout decision must not fail on bookkeeping. Fits ``RolloutController(on_alias=...)``.
        """
        mv = self.model_version(version)
        if mv is None:
            log.warning(
                "MLflow alias %s: fleet version %d is not registered under %s", alias, version, self.name
            )
            return False
        self.client.set_registered_model_alias(self.name, alias, mv.version)
        return True

    def delete_alias(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException:
            pass

    def alias(self, alias: str) -> int | None:
        """The fleet version ``alias`` points at (None: unset)."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None
        return int(mv.tags[FLEET_VERSION_TAG])

    def versions(self) -> list[int]:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException:
            return []
        return sorted(int(mv.tags[FLEET_VERSION_TAG]) for mv in found if FLEET_VERSION_TAG in mv.tags)


class Tracker:
    """The learner's MLflow run: params, metrics, artifacts, system metrics, registered versions."""

    def __init__(self, cfg: MlflowConfig, data_dir: str | Path):
        self.cfg = cfg
        self.data_dir = Path(data_dir).expanduser()
        self.uri = tracking_uri(cfg, data_dir)
        self.client = _client(cfg, data_dir)
        self.registry = FleetRegistry(cfg, data_dir)
        self.run_id: str | None = None
        self._system = None

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if not self.cfg.tracking_uri:  # local default: artifacts beside the database, under data_dir
            location = (self.data_dir / "mlflow").resolve().as_uri()
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(self.cfg.experiment, artifact_location=location)
        except MlflowException:  # created concurrently
            return self.client.get_experiment_by_name(self.cfg.experiment).experiment_id

    def start(self, run_name: str, params: Mapping[str, Any], run_id: str | None = None) -> str:
        """Start a run, or resume ``run_id`` (a restarted learner continues its run)."""
        from mlflow.exceptions import MlflowException

        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
            except MlflowException:
                run_id = None  # that store lost it (e.g. a new tracking URI): start a new run
        if not run_id:
            run = self.client.create_run(
                self._experiment_id(), run_name=run_name, tags={"molmofleet.part": "learner"}
            )
            self.run_id = run.info.run_id
            flat = flatten(params)
            items = list(flat.items())
            from mlflow.entities import Param

            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        if self.cfg.system_metrics:
            self._start_system_metrics(resume=bool(run_id))
        return self.run_id

    def _start_system_metrics(self, resume: bool) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._system = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=self.cfg.system_metrics_s,
                resume_logging=resume,
                tracking_uri=self.uri,
            )
            self._system.start()
        except Exception:  # psutil missing or the monitor refuses: system metrics are optional
            self._system = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_version(self, version: int, payload: bytes, manifest: Mapping[str, Any]) -> Any:
        """Upload the version's weights + manifest and register it in the model registry."""
        path = f"versions/v{version:06d}"
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "weights.safetensors").write_bytes(payload)
            (Path(tmp) / "manifest.json").write_text(json.dumps(dict(manifest), indent=1, default=str))
            self.client.log_artifacts(self.run_id, tmp, path)
        figures = manifest.get("figures", {}) or {}
        tags = {
            "step": manifest.get("step"),
            "parent": manifest.get("parent"),
            "sha256": manifest.get("sha256", ""),
            "size": manifest.get("size", len(payload)),
            **{f"figure.{k}": v for k, v in figures.items()},
        }
        return self.registry.register(
            version,
            f"runs:/{self.run_id}/{path}",
            self.run_id,
            tags,
            description=f"fleet version {version} from learner step {manifest.get('step')}",
        )

    def end(self, status: str = "FINISHED") -> None:
        if self._system is not None:
            self._system.finish()
            self._system = None
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : / ; anything else (a robot or embodiment name could carry it)
    return "".join(ch if ch.isalnum() or ch in "_-. :/" else "_" for ch in key)
