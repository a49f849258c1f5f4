"""Benchmarks behind ``tether bench <scenario>`` (see ``tether.__main__``)."""
