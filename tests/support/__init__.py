"""Test fakes and helpers shared across the test tree (imported as ``tests.support``)."""
