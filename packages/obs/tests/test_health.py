import time

from mlp_obs.health import CheckResult, HealthChecks


def test_checks_run_in_order_and_normalise_outcomes():
    checks = HealthChecks()
    checks.register("result", lambda: CheckResult(True, "fine", {"n": 1}))
    checks.register("bool", lambda: True)
    checks.register("tuple", lambda: (True, "also fine"))
    report = checks.run()
    assert list(report.results) == ["result", "bool", "tuple"]
    assert report.ok
    assert report.results["tuple"].detail == "also fine"
    assert report.results["result"].data == {"n": 1}


def test_a_result_records_how_long_its_check_took():
    checks = HealthChecks()
    checks.register("slow", lambda: time.sleep(0.05) or True)
    checks.register("fast", lambda: True)
    report = checks.run()
    assert report.results["slow"].seconds >= 0.05
    assert report.results["fast"].seconds < report.results["slow"].seconds
    assert report.as_dict()["checks"]["slow"]["seconds"] == round(report.results["slow"].seconds, 4)


def test_a_raising_check_fails_without_crashing():
    checks = HealthChecks()

    @checks.register("db")
    def db():
        raise ConnectionError("refused on 127.0.0.1:5432")

    result = checks.run().results["db"]
    assert not result.ok
    assert result.detail == "ConnectionError: refused on 127.0.0.1:5432"


def test_only_critical_failures_make_the_report_unhealthy():
    checks = HealthChecks()
    checks.register("optional", lambda: (False, "no GPU"), critical=False)
    assert checks.run().ok
    checks.register("model", lambda: False)
    report = checks.run()
    assert not report.ok
    optional = report.as_dict()["checks"]["optional"]
    assert isinstance(optional.pop("seconds"), float)
    assert optional == {"ok": False, "detail": "no GPU", "critical": False, "data": {}}


def test_wrong_return_type_is_a_failed_check():
    checks = HealthChecks()
    checks.register("odd", lambda: "yes")
    result = checks.run_one("odd")
    assert not result.ok and "expected CheckResult" in result.detail


def test_run_a_subset():
    checks = HealthChecks()
    checks.register("a", lambda: True)
    checks.register("b", lambda: False)
    assert checks.run(["a"]).ok
    assert list(checks.run(["a"]).results) == ["a"]
