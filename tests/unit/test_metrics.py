from proxy.metrics import Metrics


def test_counters_window_and_quantiles():
    metrics = Metrics()
    stats = metrics.pool("web", "green")
    for _ in range(98):
        stats.observe(200, 0.002)
    before = stats.snapshot()
    stats.observe(503, 0.3, proxy_made=True)
    stats.observe(500, 4.0)
    window = stats.snapshot() - before
    assert window.requests == 2 and window.errors == 2 and window.proxy_errors == 1
    assert window.error_rate == 1.0
    assert window.quantile(0.99) == 5.0
    full = stats.snapshot()
    assert full.quantile(0.5) == 0.0025
    assert abs(full.error_rate - 0.02) < 1e-9


def test_prometheus_text_has_per_pool_series():
    metrics = Metrics()
    metrics.pool("web", "blue").observe(200, 0.01)
    metrics.pool("web", "green").observe(502, 0.01, proxy_made=True)
    text = metrics.render([("web", "blue", "127.0.0.1:1", True)])
    assert 'turnout_requests_total{service="web",pool="blue",code="2xx"} 1' in text
    assert 'turnout_requests_total{service="web",pool="green",code="5xx"} 1' in text
    assert 'turnout_proxy_errors_total{service="web",pool="green"} 1' in text
    assert 'turnout_request_duration_seconds_bucket{service="web",pool="blue",le="+Inf"} 1' in text
    assert 'turnout_upstream_healthy{service="web",pool="blue",upstream="127.0.0.1:1"} 1' in text


def test_only_500_and_502_to_504_count_as_errors():
    stats = Metrics().pool("web", "v2")
    for status in (500, 501, 502, 503, 504, 505, 507, 599, 200, 404, 101):
        stats.observe(status, 0.001)
    counters = stats.snapshot()
    assert counters.requests == 11 and counters.errors == 4
    assert counters.classes == (1, 1, 0, 1, 8)  # every 5xx is still a 5xx for Prometheus


def test_override_counters_are_apart_in_prometheus_text():
    metrics = Metrics()
    metrics.pool("web", "green").overridden.observe(500, 0.01)
    metrics.pool("web", "green").observe(200, 0.01)
    text = metrics.render([])
    assert 'turnout_requests_total{service="web",pool="green",code="5xx"} 0' in text
    assert 'turnout_override_requests_total{service="web",pool="green",code="5xx"} 1' in text
    assert metrics.counters("web")["green"].requests == 1
