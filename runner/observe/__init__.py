"""What operators watch: Prometheus metrics (``metrics``, served by ``scrape``) and the service's log (``logs``),
both derived from the audit events the journal makes (``events``), and OpenTelemetry traces (``tracing``)."""
