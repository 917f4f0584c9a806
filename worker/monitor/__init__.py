"""The admin monitor: dashboard pages, JSON API, Prometheus /metrics, health checks."""
