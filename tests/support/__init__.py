"""What the tests share: helpers (`wait_for`, `start`, ...) and the broker fixtures,
registered as plugins by tests/conftest.py (one broker process per session)."""
