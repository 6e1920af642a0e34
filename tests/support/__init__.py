"""Test fakes shared across the test tree (imported as ``tests.support``)."""
