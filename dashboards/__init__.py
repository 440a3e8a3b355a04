"""The fleet dashboard: a web page and JSON API (app.py, panels.py, static/), Prometheus ``/metrics``
(metrics.py) and a Grafana dashboard over those metrics (grafana/fleet.json). It only reads the fleet data plane
(replay store stats and the status board); ``fleet dashboard`` (fleet/cli_dashboard.py) serves it."""
