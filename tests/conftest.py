from hypothesis import HealthCheck, settings

# Property tests compare against exact references and peers; some calls compile
# Numba kernels or start peers on first use, so wall-clock deadlines would only
# make them flaky.
settings.register_profile(
    "refquant", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("refquant")
