import os

from hypothesis import HealthCheck, settings

# Property tests compare against exact references and peers; some calls compile
# Numba kernels or start peers on first use, so wall-clock deadlines would only
# make them flaky.
settings.register_profile(
    "refquant", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)
# CI explores the same examples on every run (a fixed seed per test), so that a
# landing decision never depends on the draw; local runs keep exploring.
settings.register_profile("refquant-ci", parent=settings.get_profile("refquant"), derandomize=True)
# A longer local hunt: REFQUANT_HYPOTHESIS_PROFILE=refquant-hunt (tests that set
# their own max_examples keep it; vary --hypothesis-seed to explore those).
settings.register_profile("refquant-hunt", parent=settings.get_profile("refquant"), max_examples=500)
settings.load_profile(
    os.environ.get("REFQUANT_HYPOTHESIS_PROFILE")
    or ("refquant-ci" if os.environ.get("CI") else "refquant")
)



def pytest_report_header(config):
    # Results of peer tests depend on the peers' versions (ml_dtypes 0.7 changed three
    # casts): every run names what it ran against. tests/test_versions.py checks them.
    from helpers import version_header

    return version_header()
