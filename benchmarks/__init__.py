"""Speed measurements, run by hand (see BUILD.md); not tests."""
